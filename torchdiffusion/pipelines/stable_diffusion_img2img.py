"""StableDiffusionImg2ImgPipeline: image-to-image (SDEdit, Meng et al. 2022) with Stable Diffusion.

The input image is encoded by the VAE, noised to the timestep that ``strength`` picks, and denoised from there
with the prompt's guidance: ``strength`` 1 ignores most of the image, small values keep it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..utils.torch_utils import GeneratorArg, randn_tensor
from .denoise import check_finite_number, denoise, fresh_scheduler, set_timesteps
from .sd_common import StableDiffusionMixin, StableDiffusionPipelineOutput
from .sd_images import preprocess_image

__all__ = ["StableDiffusionImg2ImgPipeline"]


def strength_timesteps(scheduler: Any, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The tail of ``scheduler.timesteps`` that ``strength`` keeps (``strength * num_inference_steps`` steps).

    Tells the scheduler where it starts (``set_begin_index``) when it counts steps; ``ValueError`` naming
    ``strength`` when no step would be left.
    """
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    start = max(num_inference_steps - kept, 0) * scheduler.order
    timesteps = scheduler.timesteps[start:]
    if len(timesteps) == 0 or kept == 0:
        raise ValueError(
            f"strength={strength} with num_inference_steps={num_inference_steps} leaves no denoising step; "
            "raise strength or num_inference_steps"
        )
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return timesteps


def expand_to_batch(x: torch.Tensor, total: int, name: str) -> torch.Tensor:
    """Repeat a batch of ``k`` rows to ``total`` rows (``total`` must be a multiple of ``k``)."""
    if x.shape[0] == total:
        return x
    if total % x.shape[0]:
        raise ValueError(f"{name} has {x.shape[0]} images, which does not divide the {total} images asked for")
    return x.repeat(total // x.shape[0], *([1] * (x.ndim - 1)))


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
        if hasattr(callback_on_step_end, "tensor_inputs"):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if image is None:
            raise ValueError("image is missing: pass the image to transform")
        check_finite_number(strength, "strength", 0.0, 1.0)
        total = self._check_common(
            prompt,
            prompt_embeds,
            negative_prompt,
            negative_prompt_embeds,
            num_inference_steps,
            timesteps,
            sigmas,
            guidance_scale,
            guidance_rescale,
            num_images_per_prompt,
            eta,
            generator,
            output_type,
            clip_skip,
            cross_attention_kwargs,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        pixels = preprocess_image(
            image, vae_scale_factor=self.vae_scale_factor, latent_channels=self.vae.config.latent_channels
        )
        call, previous = self._begin_call(
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            clip_skip=clip_skip,
            cross_attention_kwargs=cross_attention_kwargs,
        )
        try:
            with torch.inference_mode():
                device = self.device
                cfg = self.do_classifier_free_guidance
                prompt_embeds, negative_prompt_embeds = self.encode_prompt(
                    prompt,
                    device,
                    num_images_per_prompt,
                    cfg,
                    negative_prompt,
                    prompt_embeds=prompt_embeds,
                    negative_prompt_embeds=negative_prompt_embeds,
                    clip_skip=clip_skip,
                )
                scheduler = fresh_scheduler(self.scheduler)
                steps = set_timesteps(scheduler, num_inference_steps, device, timesteps=timesteps, sigmas=sigmas)
                n = num_inference_steps if timesteps is None and sigmas is None else len(steps)
                steps = strength_timesteps(scheduler, n, strength)
                call.num_timesteps = len(steps)
                latents = self.prepare_image_latents(
                    pixels, steps[:1].repeat(total), total, prompt_embeds.dtype, device, generator, scheduler
                )
                state = {
                    "prompt_embeds": torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds,
                    "negative_prompt_embeds": negative_prompt_embeds,
                }
                predict = self._predictor(self._timestep_cond(total, guidance_scale, device, latents.dtype))
                latents = denoise(
                    self,
                    scheduler,
                    latents,
                    predict,
                    steps,
                    generator=generator,
                    step_options={"eta": eta},
                    state=state,
                    callback_on_step_end=callback_on_step_end,
                    callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                )
                return self._finish(latents, output_type, return_dict, prompt_embeds.dtype)
        finally:
            self._end_call(previous)

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
