"""StableDiffusionPipeline: text-to-image with a latent diffusion model (Rombach et al. 2022).

CLIP encodes the prompt, the UNet denoises latents (batch, 4, height/8, width/8) with classifier-free guidance,
and the VAE decodes them to pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..utils.torch_utils import GeneratorArg
from .denoise import denoise, fresh_scheduler, set_timesteps
from .sd_common import StableDiffusionMixin, StableDiffusionPipelineOutput

__all__ = ["StableDiffusionPipeline", "StableDiffusionPipelineOutput"]


class StableDiffusionPipeline(StableDiffusionMixin):
    """Text-to-image. Components: ``vae`` (AutoencoderKL), ``text_encoder`` (transformers CLIPTextModel),
    ``tokenizer`` (CLIPTokenizer), ``unet`` (UNet2DConditionModel), ``scheduler`` (any SD-compatible
    scheduler), optional ``safety_checker`` + ``feature_extractor``."""

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: GeneratorArg = None,
        latents: torch.Tensor | None = None,
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
        """Generate images for ``prompt`` (one string or a list).

        ``height``/``width``: multiples of ``vae_scale_factor`` (default ``unet.config.sample_size * 8``).
        ``guidance_scale`` > 1 turns on classifier-free guidance against ``negative_prompt`` (or the empty
        prompt). ``generator``: one ``torch.Generator`` or one per image (image i then depends only on
        ``generator[i]``). ``latents``: initial noise (batch, 4, height/8, width/8). ``timesteps``/``sigmas``:
        a custom grid instead of ``num_inference_steps``. ``output_type``: "pil", "np" (batch, H, W, 3),
        "pt" (batch, 3, H, W) or "latent". ``callback_on_step_end(pipe, i, t, tensors) -> dict`` sees (and may
        replace) the tensors named in ``callback_on_step_end_tensor_inputs``.
        Returns :class:`StableDiffusionPipelineOutput` (or ``(images, nsfw_content_detected)``).
        """
        if hasattr(callback_on_step_end, "tensor_inputs"):  # Diffusers' PipelineCallback objects
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        height, width = self._default_size(height, width)
        self._check_size(height, width)
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
        call, previous = self._begin_call(
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            clip_skip=clip_skip,
            cross_attention_kwargs=cross_attention_kwargs,
        )
        try:
            with torch.inference_mode():
                return self._generate(
                    call,
                    prompt,
                    height,
                    width,
                    num_inference_steps,
                    timesteps,
                    sigmas,
                    negative_prompt,
                    num_images_per_prompt,
                    eta,
                    generator,
                    latents,
                    prompt_embeds,
                    negative_prompt_embeds,
                    output_type,
                    return_dict,
                    total,
                    callback_on_step_end,
                    callback_on_step_end_tensor_inputs,
                )
        finally:
            self._end_call(previous)

    def _generate(
        self,
        call,
        prompt,
        height,
        width,
        num_inference_steps,
        timesteps,
        sigmas,
        negative_prompt,
        num_images_per_prompt,
        eta,
        generator,
        latents,
        prompt_embeds,
        negative_prompt_embeds,
        output_type,
        return_dict,
        total,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs,
    ):
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
            clip_skip=call.clip_skip,
        )
        scheduler = fresh_scheduler(self.scheduler)
        timesteps = set_timesteps(scheduler, num_inference_steps, device, timesteps=timesteps, sigmas=sigmas)
        call.num_timesteps = len(timesteps)
        latents = self.prepare_latents(
            total,
            self.unet.config.in_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
            scheduler=scheduler,
        )
        state = {
            "prompt_embeds": torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
        }
        predict = self._predictor(self._timestep_cond(total, call.guidance_scale, device, latents.dtype))
        latents = denoise(
            self,
            scheduler,
            latents,
            predict,
            timesteps,
            generator=generator,
            step_options={"eta": eta},
            state=state,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        return self._finish(latents, output_type, return_dict, prompt_embeds.dtype)
