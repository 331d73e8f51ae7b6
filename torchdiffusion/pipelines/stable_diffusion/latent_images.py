"""Between latents and images for the Stable Diffusion pipelines: VAE encode (image-to-image, inpainting), VAE
decode with an fp32 retry when an fp16 VAE overflows, the safety checker, and the call's output object."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

from ...utils.images import postprocess
from ...utils.outputs import BaseOutput

logger = logging.getLogger(__name__)


@dataclass
class StableDiffusionPipelineOutput(BaseOutput):
    """``images``: PIL images, a numpy array (batch, height, width, 3) or a tensor (batch, 3, height, width) in
    [0, 1] (latents (batch, 4, height/8, width/8) for ``output_type="latent"``); ``nsfw_content_detected``: one
    bool per image, or None without a safety checker."""

    images: Any
    nsfw_content_detected: list[bool] | None = None


def _sample_latents(encoded: Any, generator: Any) -> torch.Tensor:
    """Latents from a VAE's ``encode`` output: a sample of ``latent_dist`` (AutoencoderKL), else ``latents``
    (AutoencoderTiny-style VAEs, which encode deterministically), or the latents tensor itself; of a tuple
    (``return_dict=False`` style) its first item."""
    if isinstance(encoded, tuple):
        encoded = encoded[0]
    if hasattr(encoded, "latent_dist"):
        return encoded.latent_dist.sample(generator)
    if hasattr(encoded, "sample") and callable(encoded.sample):  # a bare distribution (return_dict=False style)
        return encoded.sample(generator)
    if hasattr(encoded, "latents"):
        return encoded.latents
    if isinstance(encoded, torch.Tensor):
        return encoded
    raise TypeError(
        f"vae.encode returned {type(encoded).__name__}, which has neither .latent_dist nor .latents; the vae must "
        f"be an AutoencoderKL-like (latent_dist) or AutoencoderTiny-like (latents) model"
    )


class LatentImagesMixin:
    """VAE and safety-checker steps of the Stable Diffusion pipelines (reads ``vae``, ``safety_checker``,
    ``feature_extractor`` and ``device``)."""

    def _encode_images(self, images: torch.Tensor, generator: Any) -> torch.Tensor:
        """Pixels (batch, 3, H, W) in [-1, 1] -> scaled latents, sampled with one generator per image if a list."""
        vae = self.vae
        images = images.to(device=vae.device, dtype=vae.dtype)
        if isinstance(generator, (list, tuple)):
            parts = [_sample_latents(vae.encode(images[i : i + 1]), generator[i]) for i in range(images.shape[0])]
            latents = torch.cat(parts)
        else:
            latents = _sample_latents(vae.encode(images), generator)
        shift = vae.config.get("shift_factor")
        if shift is not None:
            latents = latents - shift
        return latents * vae.config.scaling_factor

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels in [-1, 1]. An fp16 VAE whose output overflows (inf/NaN) is re-run in fp32 when its
        config says ``force_upcast`` (SDXL's VAE needs this)."""
        vae = self.vae
        z = latents / vae.config.scaling_factor
        shift = vae.config.get("shift_factor")
        if shift is not None:
            z = z + shift
        image = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        if (
            vae.dtype == torch.float16
            and vae.config.get("force_upcast", True)
            and not torch.isfinite(image).all()
            and torch.isfinite(latents).all()
        ):
            logger.warning("the fp16 VAE overflowed; decoding again in float32 (force_upcast)")
            vae32 = copy.deepcopy(vae).float()
            image = vae32.decode(z.float(), return_dict=False)[0]
        return image

    def run_safety_checker(self, image: torch.Tensor, device, dtype) -> tuple[torch.Tensor, list[bool] | None]:
        """(images, one nsfw flag per image), or (images, None) without a safety checker."""
        if self.safety_checker is None:
            return image, None
        pil = postprocess(image.float(), "pil")
        inputs = self.feature_extractor(pil, return_tensors="pt").to(device)
        return self.safety_checker(images=image, clip_input=inputs.pixel_values.to(dtype))

    def _finish(self, latents: torch.Tensor, output_type: str, return_dict: bool, dtype: torch.dtype):
        """Decode, filter, convert; outputs leave inference mode (so callers may modify them in place)."""
        if output_type == "latent":
            images, nsfw = latents, None
        else:
            image, nsfw = self.run_safety_checker(self._decode(latents), self.device, dtype)
            if nsfw is not None and any(nsfw):  # flagged images are blacked out, not denormalized
                image = torch.stack([im if flag else (im / 2 + 0.5).clamp(0, 1) for im, flag in zip(image, nsfw)])
                images = postprocess(image, output_type, do_denormalize=False)
            else:
                images = postprocess(image, output_type)
        if isinstance(images, torch.Tensor):
            with torch.inference_mode(False):
                images = images.clone()
        if not return_dict:
            return images, nsfw
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=nsfw)
