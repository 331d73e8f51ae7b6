"""The speed options against Diffusers: AutoencoderTiny (weights, outputs, folders both ways, as the ``vae`` of the
SD pipelines) and guidance that stops early (Diffusers' ``SDCFGCutoffCallback`` and our ``guidance_end``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import torchdiffusion as td
from torchdiffusion.callbacks import SDCFGCutoffCallback

diffusers = pytest.importorskip("diffusers")

TOL = 2e-3  # the SD pipeline parity tolerance on [0, 1] pixels
TAESD = dict(encoder_block_out_channels=(16,) * 4, decoder_block_out_channels=(16,) * 4)


def _taesd_pair(seed=0, **kwargs):
    """Diffusers' and our AutoencoderTiny with the same perturbed random weights (not the default init)."""
    kwargs = {**TAESD, **kwargs}
    torch.manual_seed(seed)
    theirs = diffusers.AutoencoderTiny(**kwargs).eval()
    torch.manual_seed(seed)
    ours = td.AutoencoderTiny(**kwargs).eval()
    for (k, a), (k2, b) in zip(theirs.state_dict().items(), ours.state_dict().items()):
        assert k == k2 and torch.equal(a, b)  # same seed, same initial weights
    g = torch.Generator().manual_seed(seed + 1)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(state)
    ours.load_state_dict(state)
    return theirs, ours


def _close(a, b, tol=1e-4):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol


def test_autoencoder_tiny_same_outputs():
    theirs, ours = _taesd_pair()
    assert {k: v for k, v in theirs.config.items() if not k.startswith("_")} == {
        k: v for k, v in ours.config.items() if not k.startswith("_")
    }
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    z = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        _close(theirs.encode(x).latents, ours.encode(x).latents)
        _close(theirs.decode(z).sample, ours.decode(z).sample)
        _close(theirs(x).sample, ours(x).sample)
        _close(theirs.scale_latents(z), ours.scale_latents(z))
        _close(theirs.unscale_latents(z), ours.unscale_latents(z))
        for vae in (theirs, ours):
            vae.enable_slicing()
        _close(theirs.decode(z).sample, ours.decode(z).sample)
    assert (ours.latent_magnitude, ours.latent_shift, ours.scaling_factor) == (
        theirs.latent_magnitude,
        theirs.latent_shift,
        theirs.scaling_factor,
    )


def test_autoencoder_tiny_tiled_same_outputs():
    theirs, ours = _taesd_pair(seed=4)
    for vae in (theirs, ours):
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = 128, 16
    x = torch.rand(1, 3, 160, 200, generator=torch.Generator().manual_seed(5)) * 2 - 1
    z = torch.randn(1, 4, 24, 20, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        _close(theirs.encode(x).latents, ours.encode(x).latents)
        _close(theirs.decode(z).sample, ours.decode(z).sample)


def test_autoencoder_tiny_folders_both_ways(tmp_path):
    theirs, ours = _taesd_pair(seed=7, latent_magnitude=2, latent_shift=0.25)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(8))
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.AutoencoderTiny.from_pretrained(tmp_path / "ours").eval()
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = td.AutoencoderTiny.from_pretrained(tmp_path / "theirs").eval()
    assert loaded.latent_magnitude == 2 and back.latent_shift == 0.25
    with torch.no_grad():
        expected = theirs.decode(z).sample
        _close(back.decode(z).sample, expected)
        _close(loaded.decode(z).sample, expected)


def _image(seed=0, size=64):
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


def _mask(size=64):
    m = np.zeros((size, size), "uint8")
    m[:, size // 2 :] = 255
    return Image.fromarray(m)


CASES = {
    "StableDiffusionPipeline": dict(),
    "StableDiffusionImg2ImgPipeline": dict(image=_image(), strength=0.7),
    "StableDiffusionInpaintPipeline": dict(image=_image(), mask_image=_mask(), strength=0.8),
}


def _pipes(cls_name, folder, vae_pair=None):
    theirs = getattr(diffusers, cls_name).from_pretrained(folder)
    ours = getattr(td, cls_name).from_pretrained(folder)
    if vae_pair is not None:
        theirs.vae, ours.vae = vae_pair
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
    return theirs, ours


def _images(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    return pipe("the cat", generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images


@pytest.mark.parametrize("cls_name", sorted(CASES))
def test_sd_pipelines_with_autoencoder_tiny(tiny_sd_folder, cls_name):
    theirs, ours = _pipes(cls_name, tiny_sd_folder, _taesd_pair(seed=9))
    a, b = _images(theirs, **CASES[cls_name]), _images(ours, **CASES[cls_name])
    assert a.shape == b.shape == (1, 64, 64, 3)
    assert np.abs(a - b).max() <= TOL


@pytest.mark.parametrize("ratio", [0.3, 0.75])
def test_cfg_cutoff_same_images_as_diffusers(tiny_sd_folder, ratio):
    """Diffusers' pipeline with its SDCFGCutoffCallback; ours with that callback, with ours, and with
    ``guidance_end``: the same images, and other calls of the pipeline are not affected."""
    theirs, ours = _pipes("StableDiffusionPipeline", tiny_sd_folder)
    cutoff = diffusers.callbacks.SDCFGCutoffCallback
    reference = _images(theirs, num_inference_steps=6, callback_on_step_end=cutoff(cutoff_step_ratio=ratio))
    plain = _images(ours, num_inference_steps=6)
    for kwargs in (
        dict(callback_on_step_end=cutoff(cutoff_step_ratio=ratio)),
        dict(callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=ratio)),
        dict(guidance_end=ratio),
    ):
        got = _images(ours, num_inference_steps=6, **kwargs)
        assert np.abs(got - reference).max() <= TOL
        assert not np.array_equal(got, plain)  # guidance really stopped early
    assert np.array_equal(_images(ours, num_inference_steps=6), plain)  # the pipeline is unchanged for others


def test_pipeline_folder_with_autoencoder_tiny_both_ways(tiny_sd_folder, tmp_path):
    theirs, ours = _pipes("StableDiffusionPipeline", tiny_sd_folder, _taesd_pair(seed=10))
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = td.DiffusionPipeline.from_pretrained(tmp_path / "theirs")  # the allow-list takes AutoencoderTiny
    assert type(loaded.vae) is td.AutoencoderTiny
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "ours")
    assert type(back.vae).__name__ == "AutoencoderTiny"
    loaded.set_progress_bar_config(disable=True)
    back.set_progress_bar_config(disable=True)
    expected = _images(theirs)
    assert np.abs(_images(loaded) - expected).max() <= TOL
    assert np.abs(_images(back) - expected).max() <= TOL


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(in_channels=1, out_channels=1),
        dict(act_fn="silu"),
        dict(upsample_fn="bilinear"),
        dict(latent_channels=16),
        dict(upsampling_scaling_factor=3),
        dict(num_encoder_blocks=(1, 2, 2, 2), num_decoder_blocks=(2, 2, 2, 1)),
        dict(encoder_block_out_channels=(32,) * 3, num_encoder_blocks=(1, 1, 1),
             decoder_block_out_channels=(48,) * 3, num_decoder_blocks=(1, 1, 1)),
        dict(latent_magnitude=2, latent_shift=0.25, scaling_factor=0.5, shift_factor=0.1, force_upcast=True),
    ],
)  # fmt: skip
def test_autoencoder_tiny_builds_like_diffusers(kwargs):
    """Same arguments -> the same config and the same parameter names and shapes (defaults and every argument)."""
    theirs, ours = diffusers.AutoencoderTiny(**kwargs), td.AutoencoderTiny(**kwargs)
    assert {k: v for k, v in ours.config.items() if not k.startswith("_")} == {
        k: v for k, v in theirs.config.items() if not k.startswith("_")
    }
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
