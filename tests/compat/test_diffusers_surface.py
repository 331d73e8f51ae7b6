"""What a Diffusers user's code touches, for every model and pipeline class we share with Diffusers.

Written from Diffusers' documented arguments and observed behaviour (0.42.1): construction from the defaults and
from each documented argument (same config, same parameter names and shapes), configs across save/load, loading
with ``dtype`` / ``torch_dtype`` / ``variant`` / ``subfolder`` both ways, and the pipeline properties that step
callbacks read. Schedulers have their own module. Where we deliberately differ, the test says so and
docs/compatibility.md lists it.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import torchdiffusion as td

diffusers = pytest.importorskip("diffusers")


def public(config) -> dict:
    """The constructor keys of a config (Diffusers' private keys ``_*`` left out)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_both(name: str, **kwargs):
    """(ours, theirs) built with the same arguments on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return getattr(td, name)(**kwargs), getattr(diffusers, name)(**kwargs)


# ---- construction: defaults and each documented argument ---------------------------------------------------

UNET2D_BASE = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)
UNET2D_ARGS = [
    dict(sample_size=32),
    dict(sample_size=(16, 24)),
    dict(in_channels=1, out_channels=2),
    dict(center_input_sample=True),
    dict(time_embedding_type="fourier", flip_sin_to_cos=False),
    dict(time_embedding_dim=96),
    dict(freq_shift=1, flip_sin_to_cos=False),
    dict(
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
    ),
    dict(
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
    ),
    dict(mid_block_type=None),
    dict(layers_per_block=1),
    dict(mid_block_scale_factor=2),
    dict(downsample_padding=0),
    dict(downsample_type="resnet", upsample_type="resnet"),
    dict(dropout=0.1),
    dict(act_fn="gelu"),
    dict(attention_head_dim=None),
    dict(attention_head_dim=16),
    dict(
        norm_num_groups=None,
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
    ),
    dict(attn_norm_num_groups=4),
    dict(norm_eps=1e-6),
    dict(resnet_time_scale_shift="scale_shift"),
    dict(add_attention=False),
    dict(class_embed_type="timestep"),
    dict(class_embed_type="identity"),
    dict(num_class_embeds=10),
    dict(num_train_timesteps=1000),
]
UNET_COND_BASE = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=8,
    cross_attention_dim=16,
    attention_head_dim=4,
)
UNET_COND_ARGS = [
    dict(sample_size=64),
    dict(in_channels=9, out_channels=8),
    dict(center_input_sample=True),
    dict(flip_sin_to_cos=False, freq_shift=1),
    dict(mid_block_type=None),
    dict(mid_block_type="UNetMidBlock2D"),
    dict(only_cross_attention=True),
    dict(only_cross_attention=(True, False)),
    dict(layers_per_block=1),
    dict(layers_per_block=(1, 2)),
    dict(downsample_padding=0),
    dict(mid_block_scale_factor=2),
    dict(dropout=0.1),
    dict(act_fn="gelu"),
    dict(norm_eps=1e-6),
    dict(cross_attention_dim=(16, 24)),
    dict(transformer_layers_per_block=2),
    dict(transformer_layers_per_block=(2, 1)),
    dict(transformer_layers_per_block=((1, 2), (1, 1)), reverse_transformer_layers_per_block=((1, 1, 1), (2, 1, 1))),
    dict(encoder_hid_dim=12),
    dict(encoder_hid_dim=12, encoder_hid_dim_type="text_proj"),
    dict(attention_head_dim=(2, 4)),
    dict(use_linear_projection=True),
    dict(class_embed_type="timestep"),
    dict(class_embed_type="projection", projection_class_embeddings_input_dim=8),
    dict(num_class_embeds=7),
    dict(num_class_embeds=7, class_embeddings_concat=True),
    dict(addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=28),
    dict(upcast_attention=True),
    dict(resnet_time_scale_shift="scale_shift"),
    dict(resnet_skip_time_act=True),
    dict(resnet_out_scale_factor=2.0),
    dict(time_embedding_type="fourier", time_embedding_dim=64),
    dict(time_embedding_dim=96),
    dict(time_embedding_act_fn="silu"),
    dict(timestep_post_act="silu"),
    dict(time_cond_proj_dim=8),
    dict(conv_in_kernel=1, conv_out_kernel=5),
    dict(mid_block_only_cross_attention=True),
    dict(cross_attention_norm="group_norm"),
    dict(addition_embed_type_num_heads=8),
]
VAE_BASE = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=8,
)
VAE_ARGS = [
    dict(in_channels=1, out_channels=1),
    dict(layers_per_block=2),
    dict(act_fn="gelu"),
    dict(latent_channels=16),
    dict(sample_size=256),
    dict(scaling_factor=0.13025),
    dict(shift_factor=0.0609),
    dict(latents_mean=(0.1, 0.2, 0.3, 0.4), latents_std=(1.0, 1.1, 1.2, 1.3)),
    dict(force_upcast=False),
    dict(use_quant_conv=False, use_post_quant_conv=False),
    dict(mid_block_add_attention=False),
]
CASES = (
    [("UNet2DModel", {}), ("UNet2DConditionModel", {}), ("AutoencoderKL", {})]
    + [("UNet2DModel", {**UNET2D_BASE, **kw}) for kw in [{}] + UNET2D_ARGS]
    + [("UNet2DConditionModel", {**UNET_COND_BASE, **kw}) for kw in [{}] + UNET_COND_ARGS]
    + [("AutoencoderKL", {**VAE_BASE, **kw}) for kw in [{}] + VAE_ARGS]
)


def _case_id(case) -> str:
    name, kw = case
    base = {"UNet2DModel": UNET2D_BASE, "UNet2DConditionModel": UNET_COND_BASE, "AutoencoderKL": VAE_BASE}[name]
    if not kw:
        return f"{name}-defaults"
    changed = [f"{k}={v}" for k, v in kw.items() if base.get(k, object()) != v]
    return f"{name}-{'-'.join(changed) or 'base'}".replace(" ", "")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_models_build_like_diffusers(case):
    """Same arguments -> the same config keys and values and the same parameter names and shapes."""
    name, kwargs = case
    ours, theirs = build_both(name, **kwargs)
    assert public(ours.config) == public(theirs.config)
    assert shapes(ours) == shapes(theirs)


def test_num_attention_heads_is_accepted():
    """Diffusers refuses ``num_attention_heads`` on UNet2DConditionModel (a naming issue on its side); we take it
    as the number of heads, as its name says (docs/compatibility.md)."""
    with pytest.raises(ValueError, match="num_attention_heads"):
        build_both("UNet2DConditionModel", **UNET_COND_BASE, num_attention_heads=(2, 4))
    with torch.device("meta"):
        ours = td.UNet2DConditionModel(**UNET_COND_BASE, num_attention_heads=(2, 4))
        same = diffusers.UNet2DConditionModel(**{**UNET_COND_BASE, "attention_head_dim": (2, 4)})
    assert shapes(ours) == shapes(same)


# ---- configs: what Diffusers records, and comparisons across save/load ---------------------------------------


def _tiny_unet(lib=td):
    torch.manual_seed(0)
    return lib.UNet2DModel(**UNET2D_BASE, sample_size=8)


def test_config_keys_follow_diffusers_before_and_after_save(tmp_path):
    """Diffusers records ``_class_name`` / ``_diffusers_version`` when a config is written (save, repr): a new
    object has neither, a saved or loaded one has both."""
    for make in (_tiny_unet, lambda: td.DDPMScheduler(), lambda: td.DDPMPipeline(_tiny_unet(), td.DDPMScheduler())):
        obj = make()
        config = obj.config
        assert "_class_name" not in config and "_diffusers_version" not in config
        obj.save_pretrained(tmp_path / type(obj).__name__)
        assert obj.config["_class_name"] == type(obj).__name__
        assert obj.config["_diffusers_version"] == diffusers.__version__
        assert config is obj.config or config == obj.config


def test_config_equal_across_save_and_load(tmp_path):
    """The comparison Diffusers users write: config before save == config after load, minus the in-memory keys
    (``_use_default_values`` before, ``_name_or_path`` after) and JSON's tuple -> list."""
    unet = _tiny_unet()
    unet.save_pretrained(tmp_path / "unet")
    loaded = td.UNet2DModel.from_pretrained(tmp_path / "unet")
    a = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(unet.config).items()}
    b = dict(loaded.config)
    a.pop("_use_default_values")
    b.pop("_name_or_path")
    assert a == b
    scheduler = td.DDIMScheduler(beta_schedule="scaled_linear")
    scheduler.save_config(tmp_path / "s")
    config = dict(scheduler.config)
    config.pop("_use_default_values")
    assert config == dict(td.DDIMScheduler.from_config(td.DDIMScheduler.load_config(tmp_path / "s")).config)


def test_configs_equal_diffusers_objects_configs(tmp_path):
    """Our object's config == Diffusers' object's config, new and after save/load."""
    ours, theirs = _tiny_unet(), _tiny_unet(diffusers)
    assert public(ours.config) == public(theirs.config)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    strip = {"_use_default_values", "_name_or_path"}
    assert {k: v for k, v in ours.config.items() if k not in strip} == {
        k: v for k, v in theirs.config.items() if k not in strip
    }
    a = td.UNet2DModel.from_pretrained(tmp_path / "theirs")
    b = diffusers.UNet2DModel.from_pretrained(tmp_path / "ours")
    assert {k: v for k, v in a.config.items() if k not in strip} == {
        k: v for k, v in b.config.items() if k not in strip
    }


# ---- loading: dtype / torch_dtype / variant / subfolder -------------------------------------------------------


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    """A Diffusers-written folder with the UNet in ``unet/`` (fp32) and an fp16 variant beside it."""
    root = tmp_path_factory.mktemp("surface")
    unet = _tiny_unet(diffusers)
    unet.save_pretrained(root / "unet")
    unet.half().save_pretrained(root / "unet", variant="fp16")
    return root


@pytest.mark.parametrize("arg", ["dtype", "torch_dtype"])
def test_model_from_pretrained_dtype_and_torch_dtype(unet_folder, arg):
    ours = td.UNet2DModel.from_pretrained(unet_folder, subfolder="unet", **{arg: torch.float16})
    assert ours.dtype == torch.float16 and all(p.dtype == torch.float16 for p in ours.parameters())
    theirs = diffusers.UNet2DModel.from_pretrained(unet_folder, subfolder="unet", **{arg: torch.float16})
    assert theirs.dtype == ours.dtype


def test_model_dtype_and_torch_dtype_together(unet_folder):
    """Diffusers' ModelMixin takes ``dtype`` over ``torch_dtype``; we refuse two different values."""
    same = td.UNet2DModel.from_pretrained(unet_folder, subfolder="unet", dtype=torch.float16, torch_dtype=torch.float16)
    assert same.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        td.UNet2DModel.from_pretrained(unet_folder, subfolder="unet", dtype=torch.float16, torch_dtype=torch.bfloat16)


def test_model_variant_and_subfolder(unet_folder):
    ours = td.UNet2DModel.from_pretrained(unet_folder, subfolder="unet", variant="fp16")
    theirs = diffusers.UNet2DModel.from_pretrained(unet_folder, subfolder="unet", variant="fp16")
    assert ours.dtype == theirs.dtype == torch.float32  # the fp16 file, loaded in the default dtype
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    with pytest.raises(OSError, match="bf16"):  # Diffusers: OSError (EnvironmentError) naming the missing file
        td.UNet2DModel.from_pretrained(unet_folder, subfolder="unet", variant="bf16")


TINY_MODELS = {
    "UNet2DModel": dict(UNET2D_BASE, sample_size=8),
    "UNet2DConditionModel": dict(UNET_COND_BASE, sample_size=8),
    "AutoencoderKL": dict(VAE_BASE, sample_size=16),
    "AutoencoderTiny": dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_models_saved_with_variant_and_dtype_load_both_ways(name, tmp_path):
    torch.manual_seed(0)
    ours = getattr(td, name)(**TINY_MODELS[name])
    ours.save_pretrained(tmp_path / "ours" / "sub", variant="fp16")
    assert (tmp_path / "ours" / "sub" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    theirs = getattr(diffusers, name).from_pretrained(
        tmp_path / "ours", subfolder="sub", variant="fp16", dtype=torch.bfloat16
    )
    assert theirs.dtype == torch.bfloat16
    for k, v in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[k], v.to(torch.bfloat16)), k
    theirs.save_pretrained(tmp_path / "theirs", variant="bf16")
    back = getattr(td, name).from_pretrained(tmp_path / "theirs", variant="bf16", torch_dtype=torch.float16)
    assert back.dtype == torch.float16
    assert {p.dtype for p in back.parameters()} == {torch.float16}
    for k, v in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], v.to(torch.float16)), k
    assert public(back.config) == public(theirs.config)


# ---- pipelines --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["DDPMPipeline", "DDIMPipeline"])
def test_unconditional_pipelines_config_and_components(name, tmp_path):
    scheduler = "DDPMScheduler" if name == "DDPMPipeline" else "DDIMScheduler"
    ours = getattr(td, name)(unet=_tiny_unet(), scheduler=getattr(td, scheduler)())
    theirs = getattr(diffusers, name)(unet=_tiny_unet(diffusers), scheduler=getattr(diffusers, scheduler)())
    assert {k: tuple(v) for k, v in ours.config.items()} == {k: tuple(v) for k, v in theirs.config.items()}
    assert sorted(ours.components) == sorted(theirs.components)
    ours.save_pretrained(tmp_path / "p")
    assert getattr(diffusers, name).from_pretrained(tmp_path / "p").unet.dtype == torch.float32


# ---- transformer_layers_per_block: per-layer lists ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        # per-layer lists longer than layers_per_block: the down blocks use the first entries
        dict(
            transformer_layers_per_block=((1, 2, 3), (2, 1, 1)),
            reverse_transformer_layers_per_block=((1, 1, 1), (2, 1, 3)),
        ),
        # tuples without reverse_: the up blocks (layers_per_block + 1 layers) use the reversed lists whole
        dict(transformer_layers_per_block=((1, 2, 3), (2, 1, 1))),
        dict(
            transformer_layers_per_block=((1, 2), (2, 1)),
            reverse_transformer_layers_per_block=((1, 1, 2, 5), (2, 1, 3)),
        ),
    ],
)
def test_per_layer_transformer_depths_like_diffusers(kwargs):
    ours, theirs = build_both("UNet2DConditionModel", **UNET_COND_BASE, **kwargs)
    assert shapes(ours) == shapes(theirs)
    assert public(ours.config) == public(theirs.config)


def test_per_layer_transformer_depths_that_diffusers_cannot_build_are_refused():
    """Too few per-layer entries: Diffusers fails with an IndexError; we name the argument."""
    with pytest.raises(IndexError), torch.device("meta"):
        diffusers.UNet2DConditionModel(**UNET_COND_BASE, transformer_layers_per_block=((1, 2), (2, 1)))
    with pytest.raises(ValueError, match="transformer_layers_per_block"):
        td.UNet2DConditionModel(**UNET_COND_BASE, transformer_layers_per_block=((1, 2), (2, 1)))
    with pytest.raises(ValueError, match="transformer_layers_per_block"):
        td.UNet2DConditionModel(**UNET_COND_BASE, transformer_layers_per_block=((1,), (2, 1)))


def test_per_layer_transformer_depths_as_lists_without_reverse():
    """Diffusers takes per-layer depths without ``reverse_transformer_layers_per_block`` only as tuples (so a
    config.json it wrote does not load back: JSON gives lists); we take lists too (docs/compatibility.md)."""
    depths = [[1, 2, 3], [2, 1, 1]]
    with pytest.raises(ValueError, match="reverse_transformer_layers_per_block"), torch.device("meta"):
        diffusers.UNet2DConditionModel(**UNET_COND_BASE, transformer_layers_per_block=depths)
    with torch.device("meta"):
        ours = td.UNet2DConditionModel(**UNET_COND_BASE, transformer_layers_per_block=depths)
        theirs = diffusers.UNet2DConditionModel(
            **UNET_COND_BASE, transformer_layers_per_block=tuple(map(tuple, depths))
        )
    assert shapes(ours) == shapes(theirs)


def test_use_default_values_keeps_the_constructor_order():
    """Diffusers lists ``_use_default_values`` in set order (it varies between runs); ours follows the
    constructor's arguments, so configs compare equal across processes (docs/compatibility.md)."""
    unet = _tiny_unet()
    order = list(inspect.signature(td.UNet2DModel.__init__).parameters)
    defaulted = unet.config["_use_default_values"]
    assert defaulted == sorted(defaulted, key=order.index)


def test_transformer_depth_list_longer_than_the_blocks_is_refused():
    """One entry per block: Diffusers builds a longer list, but its mid block takes the *last* entry and the up
    blocks the reversed list from the end, so the extra entries land in the wrong blocks. We refuse it
    (docs/compatibility.md)."""
    with torch.device("meta"):
        diffusers.UNet2DConditionModel(**UNET_COND_BASE, transformer_layers_per_block=(1, 2, 3))
    with pytest.raises(ValueError, match="transformer_layers_per_block"):
        td.UNet2DConditionModel(**UNET_COND_BASE, transformer_layers_per_block=(1, 2, 3))


# ---- Stable Diffusion pipelines: dtype, variants, call properties ------------------------------------------

SD_PIPELINES = ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"]


@pytest.mark.parametrize("name", SD_PIPELINES)
def test_sd_pipelines_build_like_diffusers(name, tmp_path):
    """Built from components with the documented arguments: the same config and component names."""
    from tests.sd_fixtures import tiny_sd_components

    for extra in ({}, {"requires_safety_checker": False}):
        ours = getattr(td, name)(**tiny_sd_components(td, tmp_path / "tok"), **extra)
        theirs = getattr(diffusers, name)(**tiny_sd_components(diffusers, tmp_path / "tok"), **extra)
        assert dict(ours.config) == {k: tuple(v) if isinstance(v, list) else v for k, v in theirs.config.items()}
        assert sorted(ours.components) == sorted(theirs.components)
        assert ours.vae_scale_factor == theirs.vae_scale_factor
        assert public(ours.image_processor.config) == public(theirs.image_processor.config)
        if hasattr(theirs, "mask_processor"):
            assert public(ours.mask_processor.config) == public(theirs.mask_processor.config)
        assert list(ours._callback_tensor_inputs) == list(theirs._callback_tensor_inputs)


def _module_dtypes(pipe) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dtype=torch.bfloat16),
        dict(torch_dtype=torch.bfloat16),
        dict(dtype={"unet": torch.bfloat16, "default": torch.float16}),
        dict(torch_dtype={"text_encoder": torch.bfloat16}),
    ],
    ids=["dtype", "torch_dtype", "dict_default", "dict_no_default"],
)
def test_pipeline_dtype_like_diffusers(tiny_sd_folder, kwargs):
    """Every weight ends up in the dtype asked for (text encoder included), as in Diffusers."""
    ours = td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, **kwargs)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, **kwargs)
    assert _module_dtypes(ours) == _module_dtypes(theirs)
    for module in ours.components.values():
        if isinstance(module, torch.nn.Module):
            assert {p.dtype for p in module.parameters()} == {module.dtype}


def test_torch_dtype_is_a_plain_alias_and_stray_dict_keys_warn(tiny_sd_folder, recwarn):
    """Diffusers 0.42 deprecates ``torch_dtype`` (FutureWarning) and ignores ``dtype`` keys that name no component;
    we take ``torch_dtype`` silently (it is in most tutorials) and warn about the stray key (docs/compatibility.md)."""
    td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, torch_dtype=torch.float16)
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
    with pytest.warns(UserWarning, match="transformer"):
        pipe = td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, dtype={"transformer": torch.float16})
    assert pipe.unet.dtype == torch.float32


def test_pipeline_dtype_and_torch_dtype_together(tiny_sd_folder):
    with pytest.raises(ValueError, match="dtype"):
        td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, dtype=torch.float16, torch_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        diffusers.StableDiffusionPipeline.from_pretrained(
            tiny_sd_folder, dtype=torch.float16, torch_dtype=torch.bfloat16
        )


def test_dtype_that_is_no_dtype_is_refused(tiny_sd_folder):
    """Diffusers warns and loads float32 for a dtype that is not a torch.dtype; we refuse it ("auto" loads as
    Diffusers does) (docs/compatibility.md)."""
    with pytest.raises(TypeError, match="dtype"):
        td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, dtype="float16")
    with pytest.raises(TypeError, match="torch_dtype"):
        td.UNet2DConditionModel.from_pretrained(tiny_sd_folder, subfolder="unet", torch_dtype=16)
    with pytest.raises(TypeError, match="dtype\\['unet'\\]"):
        td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, dtype={"unet": "bf16"})
    pipe = td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, dtype="auto")
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, dtype="auto")
    assert _module_dtypes(pipe) == _module_dtypes(theirs)


def test_pipeline_variant_saved_for_every_model_and_loaded_both_ways(tiny_sd_folder, tmp_path):
    pipe = td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, dtype=torch.float16)
    pipe.save_pretrained(tmp_path / "p", variant="fp16")
    for name, file in (
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ):
        assert (tmp_path / "p" / name / f"{file}.fp16.safetensors").is_file(), name
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "p", variant="fp16")
    ours = td.StableDiffusionPipeline.from_pretrained(tmp_path / "p", variant="fp16")
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(ours, name).state_dict(), getattr(theirs, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), name
    back = td.StableDiffusionPipeline.from_pretrained(tmp_path / "p", variant="fp16", dtype=torch.float16)
    assert set(_module_dtypes(back).values()) == {torch.float16}


def test_pipeline_variant_where_only_some_components_have_it(tiny_sd_folder, tmp_path):
    """Diffusers loads the variant where a component has it and the plain weights elsewhere."""
    import shutil

    shutil.copytree(tiny_sd_folder, tmp_path / "p")
    td.UNet2DConditionModel.from_pretrained(tiny_sd_folder, subfolder="unet").half().save_pretrained(
        tmp_path / "p" / "unet", variant="fp16"
    )
    ours = td.StableDiffusionPipeline.from_pretrained(tmp_path / "p", variant="fp16")
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "p", variant="fp16")
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(ours, name).state_dict(), getattr(theirs, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), name


def test_missing_pipeline_variant_is_a_value_error(tiny_sd_folder):
    with pytest.raises(ValueError, match="variant"):
        diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, variant="fp16")
    with pytest.raises(ValueError, match="variant='fp16'"):
        td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, variant="fp16")
    with pytest.raises(ValueError, match="variant"):
        td.DiffusionPipeline.from_pretrained(tiny_sd_folder, variant="../x")


def test_pipeline_subfolder_components_and_config(tiny_sd_folder):
    ours = td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    strip = {"_name_or_path", "_use_default_values"}
    assert {k: v for k, v in ours.config.items() if k not in strip} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in theirs.config.items() if k not in strip
    }
    assert sorted(ours.components) == sorted(theirs.components)
    for name in ("unet", "vae"):
        assert public(getattr(ours, name).config) == public(getattr(theirs, name).config)
    unet = td.UNet2DConditionModel.from_pretrained(tiny_sd_folder, subfolder="unet")
    assert public(unet.config) == public(theirs.unet.config)


PROPERTIES = [
    "guidance_scale",
    "guidance_rescale",
    "clip_skip",
    "cross_attention_kwargs",
    "num_timesteps",
    "do_classifier_free_guidance",
    "interrupt",
]


def _watch(names: list[str], seen: list):
    def callback(p, i, t, tensors):
        seen.append({name: getattr(p, name) for name in names})
        return tensors

    return callback


@pytest.mark.parametrize("name", SD_PIPELINES)
def test_call_properties_callbacks_read(tiny_sd_folder, name):
    """What a step callback reads on the pipeline, and what the pipeline shows after the call."""
    from PIL import Image

    ours = getattr(td, name).from_pretrained(tiny_sd_folder)
    theirs = getattr(diffusers, name).from_pretrained(tiny_sd_folder)
    extra = {}
    if name != "StableDiffusionPipeline":
        extra["image"] = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    if name == "StableDiffusionInpaintPipeline":
        extra["mask_image"] = Image.fromarray(np.full((64, 64), 255, np.uint8))
    kwargs = dict(
        prompt="a cat",
        num_inference_steps=4,
        guidance_scale=3.0,
        guidance_rescale=0.3,
        cross_attention_kwargs={"scale": 1.0},
        output_type="latent",
        **extra,
    )
    if name != "StableDiffusionPipeline":
        kwargs["strength"] = 0.5
        kwargs.pop("guidance_rescale")  # Diffusers' image-to-image and inpainting do not take it
    names = [p for p in PROPERTIES if hasattr(type(theirs), p)]  # the properties Diffusers' class has
    runs = []
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
        seen: list = []
        pipe(**kwargs, generator=torch.Generator().manual_seed(0), callback_on_step_end=_watch(names, seen))
        after = {p: getattr(pipe, p) for p in names}
        runs.append((seen, after))
    (ours_seen, ours_after), (theirs_seen, theirs_after) = runs
    assert ours_seen == theirs_seen and len(ours_seen) == ours.num_timesteps > 0
    assert ours_after == theirs_after


@pytest.mark.parametrize("name", ["DDPMPipeline", "DDIMPipeline"])
def test_unconditional_pipelines_variant_and_dtype_both_ways(name, tmp_path):
    scheduler = "DDPMScheduler" if name == "DDPMPipeline" else "DDIMScheduler"
    theirs = getattr(diffusers, name)(unet=_tiny_unet(diffusers), scheduler=getattr(diffusers, scheduler)())
    theirs.save_pretrained(tmp_path / "theirs", variant="fp16")
    ours = getattr(td, name).from_pretrained(tmp_path / "theirs", variant="fp16", dtype=torch.float16)
    assert ours.unet.dtype == torch.float16
    ours.save_pretrained(tmp_path / "ours", variant="fp16")
    back = getattr(diffusers, name).from_pretrained(tmp_path / "ours", variant="fp16", dtype=torch.float16)
    for k, v in ours.unet.state_dict().items():
        assert torch.equal(back.unet.state_dict()[k], v), k
    with pytest.raises(ValueError, match="variant"):
        getattr(td, name).from_pretrained(tmp_path / "ours", variant="bf16")


def test_safety_checker_takes_dtype_and_variant(tmp_path):
    from tests.sd_fixtures import save_tiny_sd_with_checker

    folder = save_tiny_sd_with_checker(tmp_path / "sd")
    pipe = td.StableDiffusionPipeline.from_pretrained(folder, dtype={"safety_checker": torch.float16})
    assert pipe.safety_checker.dtype == torch.float16 and pipe.unet.dtype == torch.float32
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "safety_checker" / "model.fp16.safetensors").is_file()
    ours = td.StableDiffusionPipeline.from_pretrained(tmp_path / "fp16", variant="fp16", dtype=torch.float16)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "fp16", variant="fp16", dtype=torch.float16)
    assert ours.safety_checker.dtype == theirs.safety_checker.dtype == torch.float16
