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

from ...utils.image_regions import crop_for_inpainting, mask_crop_region, paste_inpainted
from ...utils.torch_utils import GeneratorArg, randn_tensor
from ..denoise import add_noise_at, check_finite_number, check_latents, check_positive_int
from .base import StableDiffusionMixin
from .call import SDCall
from .image_inputs import expand_to_batch, preprocess_image, preprocess_mask
from .latent_images import StableDiffusionPipelineOutput

__all__ = ["StableDiffusionInpaintPipeline"]


class StableDiffusionInpaintPipeline(StableDiffusionMixin):
    """Inpainting with the components of :class:`StableDiffusionPipeline` (9- or 4-channel UNet)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"]
    _has_mask_processor = True  # pipe.mask_processor, as Diffusers' inpainting pipeline

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
        cache_interval: int | None = None,
        cache_depth: int = 1,
        guidance_end: float = 1.0,
    ) -> StableDiffusionPipelineOutput | tuple:
        """Repaint where ``mask_image`` is white (>= 0.5) and keep the rest of ``image``.

        ``image``: as for image-to-image; ``mask_image``: PIL, numpy (H, W) or tensor (1, H, W) / (B, 1, H, W)
        in [0, 1]. Both are resized to ``height`` x ``width`` (default ``unet.config.sample_size * 8``).
        ``strength`` < 1 starts from the noised image instead of pure noise. ``masked_image_latents``
        (batch, 4, h, w) replaces the encoded masked image. ``padding_mask_crop`` (pixels, PIL ``image`` and
        ``mask_image`` and ``output_type="pil"`` only): inpaint just the mask's bounding box grown by that many
        pixels and matched to the ``width / height`` aspect ratio, at ``height`` x ``width``, and paste the result
        back into the full-size image (outside the mask the original pixels are kept). Other arguments as
        :meth:`StableDiffusionPipeline.__call__`.
        """
        call = SDCall.from_arguments(locals())
        if image is None:
            raise ValueError("image is missing: pass the image to inpaint")
        if mask_image is None:
            raise ValueError("mask_image is missing: pass a mask (white = repaint)")
        channels = self.unet.config.in_channels
        latent_channels = self.vae.config.latent_channels
        if channels not in (latent_channels, 2 * latent_channels + 1):
            raise ValueError(f"unet has {channels} input channels; inpainting needs 4 or 9 (latents, mask, image)")
        check_finite_number(strength, "strength", 0.0, 1.0)
        height, width = call.height, call.width = self._default_size(height, width)
        self._check_size(height, width)
        self._check_call(call)
        f = self.vae_scale_factor
        box = None
        to_inpaint, mask_to_use = image, mask_image
        if padding_mask_crop is not None:
            box = self._check_padding_mask_crop(padding_mask_crop, image, mask_image, output_type, width, height)
            to_inpaint, mask_to_use = crop_for_inpainting(image, mask_image, box, width, height)
        call.image = preprocess_image(to_inpaint, height, width, f, latent_channels=None)
        call.mask = preprocess_mask(mask_to_use, height, width, f)
        shape = (call.batch_size, latent_channels, height // f, width // f)
        if latents is not None:
            check_latents(latents, shape, f)
        if masked_image_latents is not None and (
            not isinstance(masked_image_latents, torch.Tensor) or masked_image_latents.shape[1:] != shape[1:]
        ):
            raise ValueError(
                f"masked_image_latents must have shape (batch, {latent_channels}, {height // f}, "
                f"{width // f}), got {tuple(getattr(masked_image_latents, 'shape', ()))}"
            )
        out = self._run(self._inpaint, call)
        if box is not None:  # paste the inpainted crops back into the original image
            images, nsfw = (out.images, out.nsfw_content_detected) if return_dict else out
            images = [paste_inpainted(image, mask_image, im, box) for im in images]
            out = StableDiffusionPipelineOutput(images, nsfw) if return_dict else (images, nsfw)
        return out

    @staticmethod
    def _check_padding_mask_crop(
        padding_mask_crop: Any, image: Any, mask_image: Any, output_type: str, width: int, height: int
    ) -> tuple[int, int, int, int]:
        """Validate the ``padding_mask_crop`` inputs (one PIL image and mask of one size, PIL output); return the
        crop box (x1, y1, x2, y2)."""
        from PIL import Image

        check_positive_int(padding_mask_crop, "padding_mask_crop", minimum=0)
        for name, value in (("image", image), ("mask_image", mask_image)):
            if not isinstance(value, Image.Image):
                raise ValueError(
                    f"{name} must be one PIL image when padding_mask_crop is set, got {type(value).__name__}"
                )
        if image.size != mask_image.size:
            raise ValueError(f"mask_image has size {mask_image.size} but image has {image.size}; they must match")
        if output_type != "pil":
            raise ValueError(f"output_type must be 'pil' when padding_mask_crop is set, got {output_type!r}")
        return mask_crop_region(mask_image, width, height, padding_mask_crop)

    def _inpaint(self, call: SDCall) -> StableDiffusionPipelineOutput | tuple:
        """The inpainting run for a checked ``call``: ``call.image`` (B, 3, H, W) in [-1, 1], ``call.mask``
        (B, 1, H, W) of 0/1."""
        state = self._prepare_denoising(call)
        scheduler, steps, total = call.scheduler, call.timesteps, call.batch_size
        device, dtype, generator, latents = self.device, state["prompt_embeds"].dtype, call.generator, call.latents
        pixels, mask = call.image, call.mask
        full_strength = call.strength == 1.0
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
                latents = add_noise_at(scheduler, image_latents, noise, call.begin_index)
        else:
            noise = latents.to(device)
            latents = noise * scheduler.init_noise_sigma

        # The UNet's extra inputs: the mask at latent size and the latents of the image with the hole cut out.
        masked_image_latents = call.masked_image_latents
        if masked_image_latents is None:
            masked_image_latents = self._encode_images(pixels * (mask < 0.5), generator)
        masked_image_latents = expand_to_batch(masked_image_latents.to(device=device, dtype=dtype), total, "image")
        small_mask = expand_to_batch(
            F.interpolate(mask, size=(h, w)).to(device=device, dtype=dtype), total, "mask_image"
        )
        cfg = self._guides(call)
        state["mask"] = torch.cat([small_mask] * 2) if cfg else small_mask
        state["masked_image_latents"] = torch.cat([masked_image_latents] * 2) if cfg else masked_image_latents
        after_step = None
        if blend:

            def after_step(x: torch.Tensor, i: int, t: torch.Tensor, state: dict) -> torch.Tensor:
                known = image_latents
                if i < len(steps) - 1:
                    known = scheduler.add_noise(image_latents, noise, steps[i + 1 : i + 2])
                keep = state["mask"][: x.shape[0]]
                return (1 - keep) * known + keep * x

        extra = () if blend else ("mask", "masked_image_latents")
        return self._denoise_and_finish(call, latents, state, extra, after_step)
