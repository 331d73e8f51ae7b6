"""StableDiffusionImg2ImgPipeline: image-to-image (SDEdit, Meng et al. 2022) with Stable Diffusion.

The input image is encoded by the VAE, noised to the timestep that ``strength`` picks, and denoised from there
with the prompt's guidance: ``strength`` 1 ignores most of the image, small values keep it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..utils.torch_utils import GeneratorArg, randn_tensor
from .denoise import check_finite_number
from .sd_common import StableDiffusionMixin
from .sd_images import expand_to_batch, preprocess_image
from .sd_latents import StableDiffusionPipelineOutput

__all__ = ["StableDiffusionImg2ImgPipeline"]


class StableDiffusionImg2ImgPipeline(StableDiffusionMixin):
    """Image-to-image with the components of :class:`StableDiffusionPipeline`."""

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: GeneratorArg = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> StableDiffusionPipelineOutput | tuple:
        """Repaint ``image`` (PIL, numpy (H, W, 3) in [0, 1], tensor (3, H, W) in [0, 1], a batch or list of them,
        or latents (batch, 4, h, w)) following ``prompt``. ``strength`` in [0, 1]: how much of the schedule is
        run (1: start from pure noise). Other arguments as :meth:`StableDiffusionPipeline.__call__`.
        """
        a = self._arguments(locals())
        if image is None:
            raise ValueError("image is missing: pass the image to transform")
        check_finite_number(strength, "strength", 0.0, 1.0)
        total = self._check_common(a)
        pixels = preprocess_image(
            image, vae_scale_factor=self.vae_scale_factor, latent_channels=self.vae.config.latent_channels
        )

        def generate(call: Any) -> StableDiffusionPipelineOutput | tuple:
            state, scheduler, steps = self._prepare_denoising(call, a, strength)
            dtype = state["prompt_embeds"].dtype
            first = steps[:1].repeat(total)
            latents = self.prepare_image_latents(pixels, first, total, dtype, self.device, generator, scheduler)
            return self._denoise_and_finish(call, a, total, scheduler, steps, latents, state)

        return self._run(a, generate)

    def prepare_image_latents(
        self, pixels: torch.Tensor, timestep: torch.Tensor, total: int, dtype, device, generator, scheduler
    ) -> torch.Tensor:
        """Encode ``pixels`` (or take them as latents), repeat to ``total`` and noise them to ``timestep``."""
        pixels = pixels.to(device=device, dtype=dtype)
        if pixels.shape[1] == self.vae.config.latent_channels:
            init = pixels
        elif isinstance(generator, (list, tuple)):  # one generator per image: encode each image on its own
            init = self._encode_images(expand_to_batch(pixels, total, "image"), generator)
        else:
            init = self._encode_images(pixels, generator)
        init = expand_to_batch(init.to(dtype), total, "image")
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
        return scheduler.add_noise(init, noise, timestep)
