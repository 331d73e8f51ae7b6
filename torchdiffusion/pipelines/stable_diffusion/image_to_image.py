"""StableDiffusionImg2ImgPipeline: image-to-image (SDEdit, Meng et al. 2022) with Stable Diffusion.

The input image is encoded by the VAE, noised to the timestep that ``strength`` picks, and denoised from there
with the prompt's guidance: ``strength`` 1 ignores most of the image, small values keep it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...utils.torch_utils import GeneratorArg, randn_tensor
from ..denoise import add_noise_at, check_finite_number
from .base import StableDiffusionMixin
from .call import SDCall
from .image_inputs import expand_to_batch, preprocess_image
from .latent_images import StableDiffusionPipelineOutput

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
        cache_interval: int | None = None,
        cache_depth: int = 1,
        guidance_end: float = 1.0,
    ) -> StableDiffusionPipelineOutput | tuple:
        """Repaint ``image`` (PIL, numpy (H, W, 3) in [0, 1], tensor (3, H, W) in [0, 1], a batch or list of them,
        or latents (batch, 4, h, w)) following ``prompt``. ``strength`` in [0, 1]: how much of the schedule is
        run (1: start from pure noise). Other arguments as :meth:`StableDiffusionPipeline.__call__`.
        """
        call = SDCall.from_arguments(locals())
        if image is None:
            raise ValueError("image is missing: pass the image to transform")
        check_finite_number(strength, "strength", 0.0, 1.0)
        self._check_call(call)
        call.image = preprocess_image(
            image, vae_scale_factor=self.vae_scale_factor, latent_channels=self.vae.config.latent_channels
        )
        return self._run(self._generate, call)

    def _generate(self, call: SDCall) -> StableDiffusionPipelineOutput | tuple:
        state = self._prepare_denoising(call)
        latents = self.prepare_image_latents(
            call.image,
            call.batch_size,
            state["prompt_embeds"].dtype,
            self.device,
            call.generator,
            scheduler=call.scheduler,
            begin_index=call.begin_index,
        )
        return self._denoise_and_finish(call, latents, state)

    def prepare_image_latents(
        self,
        pixels: torch.Tensor,
        total: int,
        dtype: torch.dtype,
        device: torch.device | str,
        generator: Any,
        *,
        scheduler: Any,
        begin_index: int,
    ) -> torch.Tensor:
        """Encode ``pixels`` (batch, 3, H, W) in [-1, 1] (or take them as latents (batch, 4, H/8, W/8)), repeat to
        ``total`` images and noise them to the level of ``scheduler.timesteps[begin_index]``, where the run starts
        (``scheduler``: the call's own copy)."""
        pixels = pixels.to(device=device, dtype=dtype)
        if pixels.shape[1] == self.vae.config.latent_channels:
            init = pixels
        elif isinstance(generator, (list, tuple)):  # one generator per image: encode each image on its own
            init = self._encode_images(expand_to_batch(pixels, total, "image"), generator)
        else:
            init = self._encode_images(pixels, generator)
        init = expand_to_batch(init.to(dtype), total, "image")
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
        return add_noise_at(scheduler, init, noise, begin_index)
