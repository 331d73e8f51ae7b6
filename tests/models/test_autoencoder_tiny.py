"""AutoencoderTiny (TAESD): shapes, the latent byte round trip, slicing and tiling, errors naming the argument."""

from __future__ import annotations

import pytest
import torch

from torchdiffusion import AutoencoderTiny

TINY = dict(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4)


def tiny(**overrides) -> AutoencoderTiny:
    torch.manual_seed(0)
    return AutoencoderTiny(**{**TINY, **overrides}).eval()


def test_shapes_config_and_scaling():
    vae = tiny()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latents
        assert z.shape == (2, 4, 4, 6)
        (z2,) = vae.encode(x, return_dict=False)
        assert torch.equal(z, z2)
        out = vae.decode(z).sample
        assert out.shape == (2, 3, 32, 48) and out.is_contiguous()
        assert vae.decode(z, return_dict=False)[0].shape == out.shape
        assert vae(x).sample.shape == out.shape
    assert vae.config.block_out_channels == (8,) * 4 and vae.config.scaling_factor == 1.0
    assert vae.config.force_upcast is False and vae.spatial_scale_factor == 8
    w = torch.linspace(-5, 5, 11)
    assert vae.scale_latents(w).min() == 0 and vae.scale_latents(w).max() == 1
    inner = torch.linspace(-2.9, 2.9, 7)
    torch.testing.assert_close(vae.unscale_latents(vae.scale_latents(inner)), inner)


def test_slicing_and_tiling_match_the_plain_run():
    vae = tiny()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        plain_z, plain_x = vae.encode(x).latents, vae.decode(z).sample
        vae.enable_slicing()
        torch.testing.assert_close(vae.encode(x).latents, plain_z, atol=1e-6, rtol=0)
        torch.testing.assert_close(vae.decode(z).sample, plain_x, atol=1e-6, rtol=0)
        vae.disable_slicing()
        vae.enable_tiling()  # one tile: images below tile_sample_min_size are not split
        torch.testing.assert_close(vae.encode(x).latents, plain_z, atol=1e-6, rtol=0)
        vae.tile_sample_min_size, vae.tile_latent_min_size = 128, 16
        big = vae.decode(torch.randn(1, 4, 24, 24)).sample
        assert big.shape == (1, 3, 192, 192) and torch.isfinite(big).all()
        vae.disable_tiling()


def test_gradients_and_checkpointing():
    vae = tiny()
    vae.train()
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    vae.decode(vae.encode(x).latents).sample.sum().backward()
    g = x.grad.clone()
    x.grad = None
    vae.enable_gradient_checkpointing()
    vae.decode(vae.encode(x).latents).sample.sum().backward()
    torch.testing.assert_close(x.grad, g, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(encoder_block_out_channels=(8, 8)), "encoder_block_out_channels"),
        (dict(decoder_block_out_channels=(8, 8, 16, 16)), "decoder_block_out_channels"),
        (dict(act_fn="tanh"), "act_fn"),
        (dict(upsample_fn="cubic"), "upsample_fn"),
    ],
)
def test_bad_constructor_arguments(overrides, name):
    with pytest.raises(ValueError, match=name):
        tiny(**overrides)


def test_bad_inputs_name_the_argument():
    vae = tiny()
    with pytest.raises(ValueError, match="x must be"):
        vae.encode(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match="x must be"):
        vae.decode(torch.randn(1, 3, 2, 2))
    with pytest.raises(TypeError, match="x must be"):
        vae.decode([1, 2])
