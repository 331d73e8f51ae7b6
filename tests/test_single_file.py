"""from_single_file: tiny checkpoints written in the original CompVis/LDM key layout load into the same models,
with configs inferred from shapes or read from a local folder, from .safetensors or .ckpt (weights_only)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import torchdiffusion as td
from tests.sd_fixtures import (
    SCHEDULER_KWARGS,
    clip_to_ldm,
    clip_to_openclip,
    pipeline_to_ldm,
    tiny_text_encoder,
    tiny_tokenizer,
    unet_to_ldm,
    vae_to_ldm,
)
from torchdiffusion.single_file import load_checkpoint
from torchdiffusion.single_file_convert import build_text_encoder

pytest.importorskip("transformers")

# Shapes that follow SD's rules (32 norm groups, 8 heads with conv projections) so shape inference is exact.
UNET = dict(
    sample_size=64,
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
VAE = dict(
    sample_size=512,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    return dict(
        unet=td.UNet2DConditionModel(**UNET).eval(),
        vae=td.AutoencoderKL(**VAE).eval(),
        text_encoder=tiny_text_encoder(tokenizer, hidden_size=64, num_attention_heads=1),
        tokenizer=tokenizer,
    )


@pytest.fixture(scope="module")
def ckpt_path(parts, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "sd-tiny.safetensors"
    state = unet_to_ldm(parts["unet"].state_dict(), 1)
    state.update(vae_to_ldm(parts["vae"].state_dict()))
    state.update(clip_to_ldm(parts["text_encoder"].state_dict()))
    state["model_ema.decay"] = torch.tensor(0.999)
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=0, rtol=0)


def test_unet_and_vae_with_configs_inferred_from_shapes(parts, ckpt_path):
    unet = td.UNet2DConditionModel.from_single_file(ckpt_path)
    for key, value in UNET.items():
        assert unet.config[key] == (list(value) if isinstance(value, tuple) else value), key
    _same_model(unet, parts["unet"])
    vae = td.AutoencoderKL.from_single_file(ckpt_path)
    assert vae.config.scaling_factor == 0.18215
    _same_model(vae, parts["vae"])
    assert td.AutoencoderKL.from_single_file(ckpt_path, torch_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_ckpt_read_with_weights_only(parts, ckpt_path, tmp_path):
    state = load_checkpoint(ckpt_path)
    torch.save({"state_dict": state, "global_step": 10}, tmp_path / "sd.ckpt")
    _same_model(td.UNet2DConditionModel.from_single_file(tmp_path / "sd.ckpt"), parts["unet"])
    _same_model(td.AutoencoderKL.from_single_file(state), parts["vae"])  # a state dict works too


def test_config_from_a_local_folder_and_overrides(parts, ckpt_path, tmp_path):
    parts["unet"].save_config(tmp_path / "unet")
    unet = td.UNet2DConditionModel.from_single_file(ckpt_path, config=tmp_path, subfolder="unet")
    _same_model(unet, parts["unet"])
    unet = td.UNet2DConditionModel.from_single_file(ckpt_path, config=tmp_path / "unet", upcast_attention=True)
    assert unet.config.upcast_attention is True


def test_pipeline_from_single_file_gives_the_original_images(parts, ckpt_path):
    scheduler = td.PNDMScheduler(**SCHEDULER_KWARGS)
    original = td.StableDiffusionPipeline(**parts, scheduler=scheduler, requires_safety_checker=False)
    loaded = td.StableDiffusionPipeline.from_single_file(ckpt_path, tokenizer=parts["tokenizer"])
    assert type(loaded.scheduler) is td.PNDMScheduler and loaded.scheduler.config.steps_offset == 1
    assert loaded.safety_checker is None
    images = []
    for pipe in (original, loaded):
        pipe.set_progress_bar_config(disable=True)
        images.append(
            pipe("the cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
        )
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)
    img2img = td.StableDiffusionImg2ImgPipeline.from_single_file(
        ckpt_path, tokenizer=parts["tokenizer"], torch_dtype={"unet": torch.bfloat16, "default": torch.float32}
    )
    assert img2img.unet.dtype == torch.bfloat16 and img2img.vae.dtype == torch.float32


def test_sd2_openclip_text_encoder_and_default_scheduler(parts, tmp_path):
    torch.manual_seed(1)
    text = tiny_text_encoder(
        parts["tokenizer"], hidden_size=64, num_attention_heads=1, hidden_act="gelu", num_hidden_layers=2
    )
    state = clip_to_openclip(text.state_dict())  # three blocks: the last one is dropped, as SD 2 does
    loaded = build_text_encoder(state)
    assert loaded.config.num_hidden_layers == 2 and loaded.config.hidden_act == "gelu"
    ids = parts["tokenizer"](["a photo of the cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], text(ids)[0])
    unet = td.UNet2DConditionModel(**{**UNET, "use_linear_projection": True, "attention_head_dim": [1, 1]})
    full = unet_to_ldm(unet.state_dict(), 1) | vae_to_ldm(parts["vae"].state_dict()) | state
    pipe = td.StableDiffusionPipeline.from_single_file(full, tokenizer=parts["tokenizer"])
    assert type(pipe.scheduler) is td.DDIMScheduler and pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.use_linear_projection is True
    _same_model(pipe.unet, unet)


def test_diffusers_layout_folder_as_config(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from tests.sd_fixtures import save_tiny_sd

    folder = save_tiny_sd(tmp_path / "sd")
    ref = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    save_file(pipeline_to_ldm(ref), tmp_path / "m.safetensors")
    pipe = td.StableDiffusionInpaintPipeline.from_single_file(tmp_path / "m.safetensors", config=folder)
    assert pipe.unet.config.norm_num_groups == 4 and type(pipe.scheduler) is td.PNDMScheduler
    _same_model(pipe.vae, ref.vae)


def test_errors_name_what_is_wrong(parts, ckpt_path, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        td.UNet2DConditionModel.from_single_file("https://huggingface.co/x/y/blob/main/model.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        td.AutoencoderKL.from_single_file(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="original_config"):
        td.UNet2DConditionModel.from_single_file(ckpt_path, original_config="v1-inference.yaml")
    with pytest.raises(ValueError, match="config"):
        td.UNet2DConditionModel.from_single_file(ckpt_path, config=tmp_path / "nowhere")
    state = load_checkpoint(ckpt_path)
    state["model.diffusion_model.input_blocks.1.7.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"input_blocks\.1\.7"):
        td.UNet2DConditionModel.from_single_file(state)
    with pytest.raises(ValueError, match="no unet"):
        td.UNet2DConditionModel.from_single_file({"foo": torch.zeros(1)})
    with pytest.raises(TypeError, match="not_a_component"):
        td.StableDiffusionPipeline.from_single_file(ckpt_path, not_a_component=1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and a repo name no cache holds: the lookup stays local
    monkeypatch.setattr("torchdiffusion.single_file._CLIP_TOKENIZERS", {"clip": ("nobody/no-such-tokenizer", None)})
    with pytest.raises(ValueError, match="tokenizer"):
        td.StableDiffusionPipeline.from_single_file(ckpt_path, local_files_only=True)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(OSError, match="weights_only"):
        load_checkpoint(bad)


# ---- original_config: the LDM YAML -------------------------------------------------------------------------

LDM_YAML = """
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "{parameterization}"
    linear_start: 0.001
    linear_end: 0.015
    timesteps: 500
    scale_factor: 0.2
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [ 1 ]
        num_res_blocks: 1
        channel_mult: [ 1, 2 ]
        {heads}
        use_spatial_transformer: True
        use_linear_in_transformer: {linear}
        transformer_depth: 1
        context_dim: 64
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [ 1, 2 ]
          num_res_blocks: 1
          attn_resolutions: []
          dropout: 0.0
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
"""


def _write_yaml(path, parameterization="eps", heads="num_heads: 4", linear=False):
    path.write_text(LDM_YAML.format(parameterization=parameterization, heads=heads, linear=linear))
    return path


@pytest.fixture(scope="module")
def four_head_ckpt(parts, tmp_path_factory):
    """A checkpoint whose UNet has 4 heads: shapes cannot tell (inference says 8), the YAML can."""
    torch.manual_seed(3)
    unet = td.UNet2DConditionModel(**{**UNET, "attention_head_dim": 4}).eval()
    state = unet_to_ldm(unet.state_dict(), 1)
    state.update(vae_to_ldm(parts["vae"].state_dict()))
    state.update(clip_to_ldm(parts["text_encoder"].state_dict()))
    path = tmp_path_factory.mktemp("ckpt4") / "sd-4heads.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return unet, path


def _unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    text = torch.randn(1, 5, 64, generator=g)
    with torch.no_grad():
        return unet(x, 10, encoder_hidden_states=text).sample


def test_original_config_yaml_wins_over_shapes(four_head_ckpt, parts, tmp_path):
    unet4, path = four_head_ckpt
    yaml_path = _write_yaml(tmp_path / "v1-inference.yaml")
    assert td.UNet2DConditionModel.from_single_file(path).config.attention_head_dim == 8  # shapes alone: SD's rule
    unet = td.UNet2DConditionModel.from_single_file(path, original_config=yaml_path)
    assert unet.config.attention_head_dim == 4 and unet.config.cross_attention_dim == 64
    assert list(unet.config.down_block_types) == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert list(unet.config.up_block_types) == ["UpBlock2D", "CrossAttnUpBlock2D"]
    assert unet.config.sample_size == 256  # 512 px over the YAML VAE's 2x downsampling, as Diffusers computes
    _same_model(unet, unet4)
    torch.testing.assert_close(_unet_out(unet), _unet_out(unet4), atol=0, rtol=0)
    vae = td.AutoencoderKL.from_single_file(path, original_config=str(yaml_path))
    assert vae.config.scaling_factor == 0.2 and vae.config.latent_channels == 4
    _same_model(vae, parts["vae"])
    # keyword overrides still apply on top; Diffusers' old name original_config_file works too
    unet = td.UNet2DConditionModel.from_single_file(path, original_config_file=yaml_path, upcast_attention=True)
    assert unet.config.upcast_attention is True and unet.config.attention_head_dim == 4


def test_original_config_pipeline_generates(four_head_ckpt, parts, tmp_path):
    unet4, path = four_head_ckpt
    yaml_path = _write_yaml(tmp_path / "v.yaml", parameterization="v")
    pipe = td.StableDiffusionPipeline.from_single_file(path, original_config=yaml_path, tokenizer=parts["tokenizer"])
    sched = pipe.scheduler
    assert type(sched) is td.DDIMScheduler and sched.config.prediction_type == "v_prediction"
    assert sched.config.num_train_timesteps == 500 and sched.config.beta_schedule == "scaled_linear"
    assert sched.config.beta_start == 0.001 and sched.config.beta_end == 0.015
    assert pipe.vae.config.scaling_factor == 0.2 and pipe.unet.config.attention_head_dim == 4
    reference = td.StableDiffusionPipeline(
        unet=unet4,
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        scheduler=td.DDIMScheduler.from_config(sched.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    images = []
    for p in (reference, pipe):
        p.set_progress_bar_config(disable=True)
        images.append(
            p(
                "a cat",
                num_inference_steps=2,
                height=32,
                width=32,
                generator=torch.Generator().manual_seed(0),
                output_type="np",
            ).images
        )
    assert images[1].shape == (1, 32, 32, 3) and np.isfinite(images[1]).all()
    # the reference VAE scales latents by 0.18215, the loaded one by the YAML's 0.2: images differ only by that
    pipe.vae.register_to_config(scaling_factor=0.18215)
    again = pipe(
        "a cat",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    np.testing.assert_allclose(again, images[0], atol=1e-5)
    assert np.abs(images[1] - images[0]).max() > 1e-4
    eps = td.StableDiffusionPipeline.from_single_file(
        path, original_config=_write_yaml(tmp_path / "eps.yaml"), tokenizer=parts["tokenizer"]
    )
    assert type(eps.scheduler) is td.PNDMScheduler and eps.scheduler.config.prediction_type == "epsilon"
    forced = td.StableDiffusionPipeline.from_single_file(
        path, original_config=yaml_path, tokenizer=parts["tokenizer"], prediction_type="epsilon"
    )
    assert forced.scheduler.config.prediction_type == "epsilon"


def test_original_config_sd2_heads_from_head_channels(parts, tmp_path):
    torch.manual_seed(4)
    unet = td.UNet2DConditionModel(**{**UNET, "use_linear_projection": True, "attention_head_dim": [1, 2]}).eval()
    state = unet_to_ldm(unet.state_dict(), 1)
    assert td.UNet2DConditionModel.from_single_file(state).config.attention_head_dim == [1, 1]  # 64-channel rule
    yaml_path = _write_yaml(tmp_path / "v2.yaml", heads="num_head_channels: 32", linear=True)
    loaded = td.UNet2DConditionModel.from_single_file(state, original_config=yaml_path)
    assert loaded.config.attention_head_dim == [1, 2] and loaded.config.use_linear_projection is True
    torch.testing.assert_close(_unet_out(loaded), _unet_out(unet), atol=0, rtol=0)
    import yaml

    as_dict = yaml.safe_load(yaml_path.read_text())  # a parsed dict is accepted too
    assert td.UNet2DConditionModel.from_single_file(state, original_config=as_dict).config.attention_head_dim == [1, 2]


def test_original_config_errors(ckpt_path, tmp_path):
    cls = td.UNet2DConditionModel
    with pytest.raises(ValueError, match="never downloads"):
        cls.from_single_file(ckpt_path, original_config="https://example.com/v1-inference.yaml")
    with pytest.raises(ValueError, match="not an existing local YAML file"):
        cls.from_single_file(ckpt_path, original_config=tmp_path / "missing.yaml")
    with pytest.raises(TypeError, match="original_config"):
        cls.from_single_file(ckpt_path, original_config=3)
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        cls.from_single_file(ckpt_path, original_config=tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        cls.from_single_file(ckpt_path, original_config=tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("model:\n  target: x\n")
    with pytest.raises(ValueError, match="'model.params'"):
        cls.from_single_file(ckpt_path, original_config=tmp_path / "empty.yaml")
    good = _write_yaml(tmp_path / "good.yaml")
    with pytest.raises(ValueError, match="not both"):
        cls.from_single_file(ckpt_path, original_config=good, config=tmp_path)
    with pytest.raises(ValueError, match="not both"):
        cls.from_single_file(ckpt_path, original_config=good, original_config_file=good)
    bad = _write_yaml(tmp_path / "bad.yaml", parameterization="x-pred")
    with pytest.raises(ValueError, match="parameterization"):
        td.StableDiffusionPipeline.from_single_file(ckpt_path, original_config=bad, tokenizer=object())


def test_original_config_matches_diffusers(four_head_ckpt, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    _, path = four_head_ckpt
    yaml_path = _write_yaml(tmp_path / "v1.yaml")
    for ours_cls, ref_cls in (
        (td.UNet2DConditionModel, diffusers.UNet2DConditionModel),
        (td.AutoencoderKL, diffusers.AutoencoderKL),
    ):
        ref = ref_cls.from_single_file(str(path), original_config=str(yaml_path), local_files_only=True)
        ours = ours_cls.from_single_file(path, original_config=yaml_path)
        for key, value in ours.config.items():
            if key.startswith("_") or key not in ref.config:
                continue
            expected = ref.config[key]
            norm = lambda v: list(v) if isinstance(v, tuple) else v
            assert norm(value) == norm(expected), key
        _same_model(ours, ref)


def test_malicious_ckpt_is_refused_and_its_code_never_runs(parts, ckpt_path, tmp_path):
    from tests.helpers import write_malicious_pickle

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    write_malicious_pickle(evil, marker, load_checkpoint(ckpt_path))
    with pytest.raises(OSError, match="weights_only"):
        td.UNet2DConditionModel.from_single_file(evil)
    with pytest.raises(OSError, match="weights_only"):
        td.StableDiffusionPipeline.from_single_file(evil, tokenizer=parts["tokenizer"])
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the control: a plain unpickler does run the payload
    assert marker.read_text() == "code ran"
