"""StableDiffusionPipeline: text-to-image with a latent diffusion model (Rombach et al. 2022).

CLIP encodes the prompt, the UNet denoises latents (batch, 4, height/8, width/8) with classifier-free guidance,
and the VAE decodes them to pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...utils.torch_utils import GeneratorArg
from .base import StableDiffusionMixin
from .call import SDCall
from .latent_images import StableDiffusionPipelineOutput

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
        cache_interval: int | None = None,
        cache_depth: int = 1,
        guidance_end: float = 1.0,
    ) -> StableDiffusionPipelineOutput | tuple:
        """Generate images for ``prompt`` (one string or a list).

        ``height``/``width``: multiples of ``vae_scale_factor`` (default ``unet.config.sample_size * 8``).
        ``guidance_scale`` > 1 turns on classifier-free guidance against ``negative_prompt`` (or the empty
        prompt). ``generator``: one ``torch.Generator`` or one per image (image i then depends only on
        ``generator[i]``). ``latents``: initial noise (batch, 4, height/8, width/8). ``timesteps``/``sigmas``:
        a custom grid instead of ``num_inference_steps``. ``output_type``: "pil", "np" (batch, H, W, 3),
        "pt" (batch, 3, H, W) or "latent". ``callback_on_step_end(pipe, i, t, tensors) -> dict`` sees (and may
        replace) the tensors named in ``callback_on_step_end_tensor_inputs``.
        Speed options (all off by default): ``cache_interval=N`` runs the whole UNet every N-th step and, in
        between, only its ``cache_depth`` shallowest levels on the deep features of the last full step (UNet
        feature caching); ``guidance_end=f`` runs classifier-free guidance for steps 0 .. int(f * steps) and the
        conditional branch alone (half the UNet batch) after that, as Diffusers' ``SDCFGCutoffCallback``.
        Returns :class:`StableDiffusionPipelineOutput` (or ``(images, nsfw_content_detected)``).
        """
        call = SDCall.from_arguments(locals())
        call.height, call.width = self._default_size(height, width)
        self._check_size(call.height, call.width)
        self._check_call(call)
        return self._run(self._generate, call)

    def _generate(self, call: SDCall) -> StableDiffusionPipelineOutput | tuple:
        state = self._prepare_denoising(call)
        latents = self.prepare_latents(
            call.batch_size,
            self.unet.config.in_channels,
            call.height,
            call.width,
            state["prompt_embeds"].dtype,
            self.device,
            call.generator,
            call.latents,
            scheduler=call.scheduler,
        )
        return self._denoise_and_finish(call, latents, state)
