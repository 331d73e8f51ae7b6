"""AutoencoderKL: shapes, argument checks, the posterior, slicing, tiling, gradient checkpointing."""

import pytest
import torch

from torchdiffusion import AutoencoderKL, AutoencoderKLOutput, DecoderOutput
from torchdiffusion.models.vae import DiagonalGaussianDistribution

TINY = dict(
    block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4, sample_size=16,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
)


def _vae(**overrides):
    torch.manual_seed(0)
    return AutoencoderKL(**dict(TINY, **overrides)).eval()


def _images(batch=2, h=16, w=16):
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_shapes_and_outputs():
    vae = _vae()
    x = _images(h=16, w=24)
    with torch.no_grad():
        enc = vae.encode(x)
        assert isinstance(enc, AutoencoderKLOutput)
        post = enc.latent_dist
        assert post.mean.shape == post.std.shape == post.var.shape == (2, 4, 4, 6)
        assert post.mode() is post.mean
        dec = vae.decode(post.mean)
        assert isinstance(dec, DecoderOutput) and dec.sample.shape == (2, 3, 16, 24)
        assert vae.decode(post.mean, return_dict=False)[0].shape == (2, 3, 16, 24)
        assert isinstance(vae.encode(x, return_dict=False)[0], DiagonalGaussianDistribution)
        assert vae(x).sample.shape == x.shape
        assert vae(x, return_dict=False)[0].shape == x.shape
    assert vae.config.scaling_factor == 0.18215 and vae.config.force_upcast is True


def test_posterior_sampling_is_reproducible_per_sample():
    vae = _vae()
    with torch.no_grad():
        post = vae.encode(_images(batch=3)).latent_dist
    a = post.sample(torch.Generator().manual_seed(1))
    b = post.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    gens = [torch.Generator().manual_seed(s) for s in (4, 5, 6)]
    batch = post.sample(gens)
    single = DiagonalGaussianDistribution(post.parameters[1:2]).sample(torch.Generator().manual_seed(5))
    torch.testing.assert_close(batch[1:2], single)
    with pytest.raises(ValueError, match="generator"):
        post.sample([torch.Generator()])


def test_distribution_math():
    params = torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    dist = DiagonalGaussianDistribution(params)
    torch.testing.assert_close(dist.kl(dist), torch.zeros(2), atol=1e-5, rtol=0)
    assert dist.kl().shape == (2,) and dist.nll(dist.mean).shape == (2,)
    fixed = DiagonalGaussianDistribution(params, deterministic=True)
    assert torch.equal(fixed.sample(torch.Generator().manual_seed(0)), fixed.mean)
    assert float(fixed.kl().sum()) == 0.0
    with pytest.raises(ValueError, match="parameters"):
        DiagonalGaussianDistribution(torch.randn(2, 7, 3, 3))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(down_block_types=("DownEncoderBlock2D",) * 2), "down_block_types"),
        (dict(up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D", "AttnUpDecoderBlock2D")), "up_block_types"),
        (dict(block_out_channels=(8, 16, 18)), "block_out_channels"),
        (dict(latent_channels=0), "latent_channels"),
        (dict(norm_num_groups=0), "norm_num_groups"),
    ],
)
def test_bad_constructor_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        AutoencoderKL(**dict(TINY, **overrides))


def test_bad_call_arguments():
    vae = _vae()
    with pytest.raises(ValueError, match="x"):
        vae.encode(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match="z"):
        vae.decode(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="z"):
        vae.decode(torch.randn(4, 4, 4))
    with pytest.raises(TypeError, match="sample"):
        vae("image")


def test_slicing_gives_the_same_result():
    vae = _vae()
    x = _images(batch=3)
    with torch.no_grad():
        moments = vae.encode(x).latent_dist.parameters
        images = vae.decode(moments[:, :4]).sample
        vae.enable_slicing()
        torch.testing.assert_close(vae.encode(x).latent_dist.parameters, moments, atol=1e-5, rtol=0)
        torch.testing.assert_close(vae.decode(moments[:, :4]).sample, images, atol=1e-5, rtol=0)
        vae.disable_slicing()
    assert not vae.use_slicing


def test_tiling_small_inputs_untouched_large_inputs_blended():
    vae = _vae()
    x = _images(batch=1)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain_enc, plain_dec = vae.encode(x).latent_dist.mean, vae.decode(z).sample
        vae.enable_tiling()
        torch.testing.assert_close(vae.encode(x).latent_dist.mean, plain_enc)  # not larger than a tile
        torch.testing.assert_close(vae.decode(z).sample, plain_dec)
        big_z = torch.randn(1, 4, 9, 7, generator=torch.Generator().manual_seed(2))
        tiled = vae.decode(big_z).sample
        assert tiled.shape == (1, 3, 36, 28) and torch.isfinite(tiled).all()
        # a tiled image stays close to the untiled one (same weights, blended seams)
        vae.disable_tiling()
        assert (tiled - vae.decode(big_z).sample).abs().mean() < 0.5
        big_x = _images(batch=1, h=40, w=24)
        assert vae.tiled_encode(big_x).latent_dist.mean.shape == (1, 4, 10, 6)
        assert vae.tiled_decode(big_z).sample.shape == (1, 3, 36, 28)


def test_gradient_checkpointing_gives_same_gradients():
    x = _images(batch=1)
    grads = []
    for checkpointing in (False, True):
        vae = _vae().train()
        if checkpointing:
            vae.enable_gradient_checkpointing()
        vae(x).sample.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4)


def test_save_and_load_round_trip(tmp_path):
    vae = _vae(scaling_factor=0.13025, shift_factor=0.1, force_upcast=False, use_quant_conv=False)
    vae.save_pretrained(tmp_path)
    loaded = AutoencoderKL.from_pretrained(tmp_path)
    assert loaded.config.shift_factor == 0.1 and loaded.quant_conv is None
    x = _images(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).sample, vae(x).sample)
