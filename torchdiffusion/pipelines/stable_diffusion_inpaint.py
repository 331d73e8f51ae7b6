"""StableDiffusionInpaintPipeline: repaint the masked part of an image with Stable Diffusion.

Two kinds of UNet work: an inpainting UNet (9 input channels: latents, the mask and the masked image's latents,
as in SD-inpainting checkpoints), and a plain 4-channel UNet, for which the known region is put back after
every step (the unmasked latents, noised to the current level; Lugmayr et al. 2022 without resampling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..utils.torch_utils import GeneratorArg, randn_tensor
from .denoise import check_finite_number, denoise, fresh_scheduler, set_timesteps
from .sd_common import StableDiffusionMixin, StableDiffusionPipelineOutput
from .sd_images import preprocess_image, preprocess_mask
from .stable_diffusion_img2img import expand_to_batch, strength_timesteps

__all__ = ["StableDiffusionInpaintPipeline"]


class StableDiffusionInpaintPipeline(StableDiffusionMixin):
    """Inpainting with the components of :class:`StableDiffusionPipeline` (9- or 4-channel UNet)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"]

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        mask_image: Any = None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float = 1.0,
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
        """Repaint where ``mask_image`` is white (>= 0.5) and keep the rest of ``image``.

        ``image``: as for image-to-image; ``mask_image``: PIL, numpy (H, W) or tensor (1, H, W) / (B, 1, H, W)
        in [0, 1]. Both are resized to ``height`` x ``width`` (default ``unet.config.sample_size * 8``).
        ``strength`` < 1 starts from the noised image instead of pure noise. ``masked_image_latents``
        (batch, 4, h, w) replaces the encoded masked image. Other arguments as
        :meth:`StableDiffusionPipeline.__call__`.
        """
        if hasattr(callback_on_step_end, "tensor_inputs"):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if image is None:
            raise ValueError("image is missing: pass the image to inpaint")
        if mask_image is None:
            raise ValueError("mask_image is missing: pass a mask (white = repaint)")
        if padding_mask_crop is not None:
            raise ValueError("padding_mask_crop is not supported; crop the image and mask before the call")
        channels = self.unet.config.in_channels
        latent_channels = self.vae.config.latent_channels
        if channels not in (latent_channels, 2 * latent_channels + 1):
            raise ValueError(f"unet has {channels} input channels; inpainting needs 4 or 9 (latents, mask, image)")
        check_finite_number(strength, "strength", 0.0, 1.0)
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
        f = self.vae_scale_factor
        pixels = preprocess_image(image, height, width, f, latent_channels=None)
        mask = preprocess_mask(mask_image, height, width, f)
        shape = (total, latent_channels, height // f, width // f)
        if latents is not None and (not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape):
            raise ValueError(f"latents must have shape {shape}, got {tuple(getattr(latents, 'shape', ()))}")
        if masked_image_latents is not None and (
            not isinstance(masked_image_latents, torch.Tensor) or masked_image_latents.shape[1:] != shape[1:]
        ):
            raise ValueError(
                f"masked_image_latents must have shape (batch, {latent_channels}, {height // f}, "
                f"{width // f}), got {tuple(getattr(masked_image_latents, 'shape', ()))}"
            )
        call, previous = self._begin_call(
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            clip_skip=clip_skip,
            cross_attention_kwargs=cross_attention_kwargs,
        )
        try:
            with torch.inference_mode():
                return self._inpaint(
                    call,
                    prompt,
                    pixels,
                    mask,
                    masked_image_latents,
                    num_inference_steps,
                    timesteps,
                    sigmas,
                    strength,
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

    def _inpaint(
        self,
        call,
        prompt,
        pixels,
        mask,
        masked_image_latents,
        num_inference_steps,
        timesteps,
        sigmas,
        strength,
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
        dtype = prompt_embeds.dtype
        scheduler = fresh_scheduler(self.scheduler)
        steps = set_timesteps(scheduler, num_inference_steps, device, timesteps=timesteps, sigmas=sigmas)
        n = num_inference_steps if timesteps is None and sigmas is None else len(steps)
        steps = strength_timesteps(scheduler, n, strength)
        call.num_timesteps = len(steps)
        full_strength = strength == 1.0
        blend = self.unet.config.in_channels == self.vae.config.latent_channels

        if isinstance(generator, (list, tuple)):  # one generator per image: each image is encoded with its own
            pixels = expand_to_batch(pixels, total, "image")
            mask = expand_to_batch(mask, total, "mask_image")
        # Initial latents: pure noise at strength 1, else the image's latents noised to the first timestep.
        image_latents = None
        if blend or (latents is None and not full_strength):
            image_latents = expand_to_batch(self._encode_images(pixels, generator).to(dtype), total, "image")
        h, w = pixels.shape[2] // self.vae_scale_factor, pixels.shape[3] // self.vae_scale_factor
        if latents is None:
            noise = randn_tensor((total, self.vae.config.latent_channels, h, w), generator, device, dtype)
            if full_strength:
                latents = noise * scheduler.init_noise_sigma
            else:
                latents = scheduler.add_noise(image_latents, noise, steps[:1].repeat(total))
        else:
            noise = latents.to(device)
            latents = noise * scheduler.init_noise_sigma

        # The UNet's extra inputs: the mask at latent size and the latents of the image with the hole cut out.
        if masked_image_latents is None:
            masked_image_latents = self._encode_images(pixels * (mask < 0.5), generator)
        masked_image_latents = expand_to_batch(masked_image_latents.to(device=device, dtype=dtype), total, "image")
        small_mask = expand_to_batch(
            F.interpolate(mask, size=(h, w)).to(device=device, dtype=dtype), total, "mask_image"
        )
        state = {
            "prompt_embeds": torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
            "mask": torch.cat([small_mask] * 2) if cfg else small_mask,
            "masked_image_latents": torch.cat([masked_image_latents] * 2) if cfg else masked_image_latents,
        }
        after_step = None
        if blend:

            def after_step(x: torch.Tensor, i: int, t: torch.Tensor, state: dict) -> torch.Tensor:
                known = image_latents
                if i < len(steps) - 1:
                    known = scheduler.add_noise(image_latents, noise, steps[i + 1 : i + 2])
                keep = state["mask"][: x.shape[0]]
                return (1 - keep) * known + keep * x

        extra = () if blend else ("mask", "masked_image_latents")
        predict = self._predictor(self._timestep_cond(total, call.guidance_scale, device, dtype), extra_inputs=extra)
        latents = denoise(
            self,
            scheduler,
            latents,
            predict,
            steps,
            generator=generator,
            step_options={"eta": eta},
            state=state,
            after_step=after_step,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        return self._finish(latents, output_type, return_dict, dtype)
