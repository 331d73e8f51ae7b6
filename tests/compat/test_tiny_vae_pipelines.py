"""Image-to-image and inpainting with a VAE whose ``encode`` returns ``.latents`` (AutoencoderTiny-style, no
``latent_dist``): the same images as Diffusers with the same stand-in VAE."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import torchdiffusion as td
from tests.sd_fixtures import tiny_sd_components
from torchdiffusion.configuration import ConfigMixin, register_to_config
from torchdiffusion.models.modeling import ModelMixin

diffusers = pytest.importorskip("diffusers")


@dataclass
class _EncoderOutput:
    latents: torch.Tensor


class TinyLatentsVAE(ModelMixin, ConfigMixin):
    """A deterministic stand-in for AutoencoderTiny: 8x average pooling + 1x1 conv in, 1x1 conv + 8x upsampling
    out. ``encode`` returns an object with ``.latents`` only."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (8, 8, 8, 8),
        scaling_factor: float = 1.0,
        force_upcast: bool = False,
    ) -> None:
        super().__init__()
        self.enc = torch.nn.Conv2d(3, latent_channels, 1)
        self.dec = torch.nn.Conv2d(latent_channels, 3, 1)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = self.enc(F.avg_pool2d(x, 8))
        return _EncoderOutput(z) if return_dict else (z,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        x = torch.tanh(F.interpolate(self.dec(z), scale_factor=8.0))
        return (x,)


def _pipes(cls_name: str, tmp_path):
    torch.manual_seed(0)
    vae = TinyLatentsVAE().eval()
    theirs_parts = tiny_sd_components(diffusers, tmp_path / "tok")
    ours_parts = tiny_sd_components(td, tmp_path / "tok")
    ours_parts["unet"].load_state_dict(theirs_parts["unet"].state_dict())
    ours_parts["text_encoder"] = theirs_parts["text_encoder"]
    theirs = getattr(diffusers, cls_name)(**{**theirs_parts, "vae": vae}, requires_safety_checker=False)
    ours = getattr(td, cls_name)(**{**ours_parts, "vae": vae}, requires_safety_checker=False)
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
    return theirs, ours


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (64, 64, 3)).astype("uint8"))


def _run(pipe, **kwargs):
    return pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np", **kwargs).images


def test_img2img_with_a_latents_vae_matches_diffusers(tmp_path):
    theirs, ours = _pipes("StableDiffusionImg2ImgPipeline", tmp_path)
    for kwargs in (dict(prompt="the cat", image=_image(), strength=0.6), dict(prompt=["a", "b"], image=_image(1))):
        a, b = _run(theirs, **kwargs), _run(ours, **kwargs)
        assert a.shape == b.shape and np.abs(a - b).max() <= 2e-3


def test_inpaint_with_a_latents_vae_matches_diffusers(tmp_path):
    theirs, ours = _pipes("StableDiffusionInpaintPipeline", tmp_path)
    mask = np.zeros((64, 64), "uint8")
    mask[16:48, 8:40] = 255
    for strength in (1.0, 0.6):
        kwargs = dict(prompt="the cat", image=_image(), mask_image=Image.fromarray(mask), strength=strength)
        a, b = _run(theirs, **kwargs), _run(ours, **kwargs)
        assert a.shape == b.shape and np.abs(a - b).max() <= 2e-3


def test_a_vae_without_latents_is_refused_with_a_clear_error(tmp_path):
    _, ours = _pipes("StableDiffusionImg2ImgPipeline", tmp_path)
    ours.vae.encode = lambda x, return_dict=True: object()
    with pytest.raises(TypeError, match="vae"):
        _run(ours, prompt="x", image=_image())
