"""Stable Diffusion models built by Diffusers load into ours with strict=True and give the same numbers; the same
seed gives the same initial weights."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import torchdiffusion as td
from tests.compat.test_unet_2d_state_parity import assert_same_initial_weights
from tests.helpers import perturb_

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4

SD1 = dict(  # SD 1.x layout (CA, CA, ..., Down), conv projections, one head count everywhere
    sample_size=16,
    block_out_channels=(32, 32, 64),
    layers_per_block=2,
    norm_num_groups=8,
    cross_attention_dim=24,
    attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD2 = dict(  # SD 2.x: linear projections, heads per block, upcast attention
    SD1,
    attention_head_dim=(2, 4, 8),
    use_linear_projection=True,
    upcast_attention=True,
    cross_attention_dim=40,
)
SDXL = dict(  # SDXL: Down first, transformer depth per block, text_time added conditioning
    sample_size=16,
    block_out_channels=(16, 32, 64),
    layers_per_block=2,
    norm_num_groups=8,
    cross_attention_dim=48,
    attention_head_dim=(2, 4, 8),
    use_linear_projection=True,
    transformer_layers_per_block=(1, 2, 3),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=20 + 6 * 8,
)
VARIANTS = {
    "sd1": SD1,
    "sd2": SD2,
    "sdxl": SDXL,
    "class_timestep_scale_shift": dict(SD1, class_embed_type="timestep", resnet_time_scale_shift="scale_shift"),
    "num_class_embeds_concat": dict(SD1, num_class_embeds=5, class_embeddings_concat=True),
    "cond_proj_kernels_acts": dict(
        SD1,
        time_cond_proj_dim=6,
        conv_in_kernel=1,
        conv_out_kernel=5,
        time_embedding_act_fn="silu",
        timestep_post_act="silu",
        time_embedding_dim=40,
    ),
    "fourier_only_cross": dict(
        SD1,
        time_embedding_type="fourier",
        only_cross_attention=(True, False, False),
        flip_sin_to_cos=False,
        freq_shift=1,
        center_input_sample=True,
    ),
    "per_layer_depths": dict(
        SDXL,
        transformer_layers_per_block=((1, 2), (2, 1), (1, 1)),
        reverse_transformer_layers_per_block=((1, 1, 2), (2, 1, 1), (1, 1, 1)),
        layers_per_block=(2, 2, 2),
    ),
    "text_proj_mid_plain": dict(
        SD1, encoder_hid_dim=10, mid_block_type="UNetMidBlock2D", layers_per_block=(1, 2, 1), cross_attention_dim=24
    ),
    "projection_class": dict(SD1, class_embed_type="projection", projection_class_embeddings_input_dim=7),
    "no_mid": dict(SD1, mid_block_type=None),
}


def _unet_inputs(config, batch=2, size=None, seq=5):
    g = torch.Generator().manual_seed(1)
    size = size or config["sample_size"]
    sample = torch.randn(batch, config.get("in_channels", 4), size, size, generator=g)
    ctx_dim = config.get("encoder_hid_dim") or config["cross_attention_dim"]
    kwargs = {"encoder_hidden_states": torch.randn(batch, seq, ctx_dim, generator=g)}
    if config.get("addition_embed_type") == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 20, generator=g),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]]).repeat(batch, 1),
        }
    if config.get("class_embed_type") == "timestep" or config.get("num_class_embeds"):
        kwargs["class_labels"] = torch.tensor([1, 3])[:batch]
    if config.get("class_embed_type") == "projection":
        kwargs["class_labels"] = torch.randn(batch, config["projection_class_embeddings_input_dim"], generator=g)
    if config.get("time_cond_proj_dim"):
        kwargs["timestep_cond"] = torch.randn(batch, config["time_cond_proj_dim"], generator=g)
    return sample, torch.tensor([10, 700])[:batch], kwargs


def _pair(config):
    torch.manual_seed(0)
    theirs = perturb_(diffusers.UNet2DConditionModel(**config).eval())
    ours = td.UNet2DConditionModel(**config).eval()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_unet_same_seed_gives_diffusers_initial_weights(name):
    config = VARIANTS[name]
    assert_same_initial_weights(
        lambda: diffusers.UNet2DConditionModel(**config), lambda: td.UNet2DConditionModel(**config), seed=5
    )


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_unet_forward_matches_diffusers(name):
    config = VARIANTS[name]
    theirs, ours = _pair(config)
    sample, t, kwargs = _unet_inputs(config)
    with torch.no_grad():
        want = theirs(sample, t, **kwargs).sample
        got = ours(sample, t, **kwargs).sample
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_unet_odd_size_masks_scalar_timestep_and_slicing():
    theirs, ours = _pair(SD2)
    sample, _, kwargs = _unet_inputs(SD2, size=13)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        want = theirs(sample, 321, encoder_attention_mask=mask, **kwargs).sample
        got = ours(sample, 321, encoder_attention_mask=mask, **kwargs).sample
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
        ours.set_attention_slice("max")
        torch.testing.assert_close(
            ours(sample, 321, encoder_attention_mask=mask, **kwargs).sample, want, atol=TOL, rtol=0
        )


def test_unet_controlnet_residuals_match():
    theirs, ours = _pair(SD1)
    sample, t, kwargs = _unet_inputs(SD1)
    shapes = [(2, 32, 16, 16)] * 3 + [(2, 32, 8, 8)] * 3 + [(2, 32, 4, 4)] + [(2, 64, 4, 4)] * 2
    g = torch.Generator().manual_seed(3)
    skips = tuple(torch.randn(s, generator=g) for s in shapes)
    with torch.no_grad():
        mid = torch.randn(2, 64, 4, 4, generator=g)
        want = theirs(
            sample, t, down_block_additional_residuals=skips, mid_block_additional_residual=mid, **kwargs
        ).sample
        got = ours(sample, t, down_block_additional_residuals=skips, mid_block_additional_residual=mid, **kwargs).sample
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_unet_folder_from_diffusers_loads(tmp_path):
    torch.manual_seed(0)
    theirs = perturb_(diffusers.UNet2DConditionModel(**SDXL).eval())
    theirs.save_pretrained(tmp_path / "unet")
    ours = td.UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    sample, t, kwargs = _unet_inputs(SDXL)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(sample, t, **kwargs).sample, theirs(sample, t, **kwargs).sample, atol=TOL, rtol=0
        )


# ---- AutoencoderKL --------------------------------------------------------------------------------------------

VAE = dict(  # the 4-level SD layout, narrowed
    block_out_channels=(8, 16, 32, 32),
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=32,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)


def _vae_pair(**overrides):
    config = dict(VAE, **overrides)
    torch.manual_seed(0)
    theirs = perturb_(diffusers.AutoencoderKL(**config).eval())
    ours = td.AutoencoderKL(**config).eval()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


@pytest.mark.parametrize(
    "overrides",
    [{}, {"layers_per_block": 2, "latent_channels": 16}, {"mid_block_add_attention": False, "use_quant_conv": False}],
)
def test_vae_same_seed_gives_diffusers_initial_weights(overrides):
    config = dict(VAE, **overrides)
    assert_same_initial_weights(lambda: diffusers.AutoencoderKL(**config), lambda: td.AutoencoderKL(**config), seed=7)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="sd"),
        pytest.param({"use_quant_conv": False, "use_post_quant_conv": False}, id="no_quant"),
        pytest.param({"mid_block_add_attention": False}, id="no_mid_attn"),
    ],
)
def test_vae_encode_decode_forward_match(overrides):
    theirs, ours = _vae_pair(**overrides)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        d_post, o_post = theirs.encode(x).latent_dist, ours.encode(x).latent_dist
        for attr in ("mean", "std", "var", "logvar"):
            torch.testing.assert_close(getattr(o_post, attr), getattr(d_post, attr), atol=TOL, rtol=0)
        torch.testing.assert_close(o_post.kl(), d_post.kl(), atol=TOL, rtol=1e-5)
        torch.testing.assert_close(
            o_post.sample(torch.Generator().manual_seed(5)),
            d_post.sample(torch.Generator().manual_seed(5)),
            atol=TOL,
            rtol=0,
        )
        z = d_post.mode()
        torch.testing.assert_close(ours.decode(z).sample, theirs.decode(z).sample, atol=TOL, rtol=0)
        torch.testing.assert_close(ours(x).sample, theirs(x).sample, atol=TOL, rtol=0)
        g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        torch.testing.assert_close(
            ours(x, sample_posterior=True, generator=g1).sample,
            theirs(x, sample_posterior=True, generator=g2).sample,
            atol=TOL,
            rtol=0,
        )


def test_vae_tiled_encode_decode_match():
    theirs, ours = _vae_pair()
    theirs.enable_tiling()
    ours.enable_tiling()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 72, 56, generator=g) * 2 - 1
    z = torch.randn(1, 4, 10, 7, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x).latent_dist.mean, theirs.encode(x).latent_dist.mean, atol=TOL, rtol=0)
        torch.testing.assert_close(ours.decode(z).sample, theirs.decode(z).sample, atol=TOL, rtol=0)


def test_vae_legacy_attention_names_load(tmp_path):
    theirs, _ = _vae_pair()
    theirs.save_pretrained(tmp_path / "vae")
    path = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = {}
    for key, value in load_file(path).items():
        for new, old in renames.items():
            key = key.replace(new, old)
        state[key] = value
    assert any(".proj_attn." in k for k in state)
    save_file(state, path)
    ours = td.AutoencoderKL.from_pretrained(tmp_path / "vae")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).sample, theirs(x).sample, atol=TOL, rtol=0)


# ---- the fast CPU kernels at model level ----------------------------------------------------------------------


def _kernels_module():
    """The layers' module holding the Winograd / sub-pixel kernels (found by content, not by file name)."""
    import importlib
    import pkgutil

    import torchdiffusion.models.layers as layers

    for info in pkgutil.iter_modules(layers.__path__):
        module = importlib.import_module(f"{layers.__name__}.{info.name}")
        if hasattr(module, "_winograd_conv3x3") and hasattr(module, "_phase_kernels"):
            return module
    raise AssertionError("no module with the Winograd and sub-pixel kernels")


def test_wide_vae_decoder_winograd_and_subpixel_paths_match(monkeypatch):
    """A VAE decoder at 256 channels on a 16x16 latent (eval, fp32, channels-last inside): its 3x3 convs take the
    Winograd F(2x2, 3x3) path and its upsampler the sub-pixel path (checked by counting calls), which the tiny
    models never reach. Bound from round-off: against a float64 run of Diffusers' model (same weights), ours must be
    within 4x the error of Diffusers' own float32 direct convolutions. Winograd's transforms add a few roundings per
    output (sums of 3-4 terms; the halvings are exact), which the error analyses of F(2x2, 3x3) put at 2-3x the
    direct kernel's (measured here: 2.4x, 2.8e-6 vs 1.2e-6 on outputs of size ~1)."""
    kernels = _kernels_module()
    calls = {"winograd": 0, "subpixel": 0}
    winograd, phase = kernels._winograd_conv3x3, kernels._phase_kernels

    def count_winograd(*args, **kwargs):
        calls["winograd"] += 1
        return winograd(*args, **kwargs)

    def count_phase(*args, **kwargs):
        calls["subpixel"] += 1
        return phase(*args, **kwargs)

    monkeypatch.setattr(kernels, "_winograd_conv3x3", count_winograd)
    monkeypatch.setattr(kernels, "WINOGRAD", kernels.WINOGRAD_RULES["AVX2"])  # the rules that take 256 channels
    monkeypatch.setattr(kernels, "_phase_kernels", count_phase)
    config = dict(
        block_out_channels=(128, 256),
        layers_per_block=1,
        norm_num_groups=32,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    torch.manual_seed(0)
    theirs = perturb_(diffusers.AutoencoderKL(**config).eval())
    ours = td.AutoencoderKL(**config).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    exact = diffusers.AutoencoderKL(**config).eval().double()
    exact.load_state_dict(theirs.state_dict(), strict=True)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, ref = ours.decode(z).sample, theirs.decode(z).sample, exact.decode(z.double()).sample
    assert calls["winograd"] >= 4 and calls["subpixel"] >= 1, calls
    direct_error = (want.double() - ref).abs().max().item()
    assert 0 < direct_error < 1e-5
    assert (got.double() - ref).abs().max().item() <= 4 * direct_error
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
