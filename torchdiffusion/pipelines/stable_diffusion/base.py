"""What the Stable Diffusion pipelines (text-to-image, image-to-image, inpainting) share.

:class:`StableDiffusionMixin` holds the components (``vae``, ``text_encoder``, ``tokenizer``, ``unet``,
``scheduler``, optional ``safety_checker`` / ``feature_extractor``) and the steps every SD call takes: check the
arguments at the door, encode the prompt with CLIP, draw the initial latents, build the guided ``predict`` that
:func:`~torchdiffusion.pipelines.denoise.denoise` runs, and decode (with an fp32 retry when an fp16 VAE
overflows). Each step takes the call's :class:`~torchdiffusion.pipelines.stable_diffusion.call.SDCall`, so one
pipeline object can serve several threads while callbacks still read and set ``pipe.guidance_scale`` /
``pipe._interrupt``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...core.guidance import classifier_free_guidance, rescale_guidance
from ...image_processor import VaeImageProcessor
from ...loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
from ...utils.images import check_output_type
from ...utils.torch_utils import check_generator, randn_tensor
from ..denoise import (
    check_finite_number,
    check_latents,
    check_positive_int,
    denoise,
    fresh_scheduler,
    set_timesteps,
    strength_timesteps,
)
from ..pipeline import DiffusionPipeline
from .call import SDCall, call_property, enter_call, exit_call
from .latent_images import LatentImagesMixin
from .prompts import PromptEncodingMixin, check_prompt_arguments

logger = logging.getLogger(__name__)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _fix_legacy_configs(scheduler: Any, unet: Any) -> None:
    """The corrections Diffusers applies to old SD folders (stale values that would give wrong images)."""
    config = getattr(scheduler, "config", None)
    if config is not None and config.get("steps_offset", 1) != 1:
        logger.warning(
            "scheduler config has steps_offset=%s; Stable Diffusion needs 1, using 1", config["steps_offset"]
        )
        scheduler.register_to_config(steps_offset=1)
    if config is not None and config.get("clip_sample", False) is True:
        logger.warning("scheduler config has clip_sample=True; Stable Diffusion needs False, using False")
        scheduler.register_to_config(clip_sample=False)
    uconfig = getattr(unet, "config", None)
    version = str(uconfig.get("_diffusers_version", "1")) if uconfig is not None else "1"
    size = uconfig.get("sample_size") if uconfig is not None else None
    try:
        old = tuple(int(p) for p in version.split(".")[:2]) < (0, 9)
    except ValueError:
        old = False
    if old and isinstance(size, int) and size < 64:
        logger.warning("unet config (diffusers %s) has sample_size=%s; SD checkpoints use 64, using 64", version, size)
        unet.register_to_config(sample_size=64)


def _guides(guidance_scale: float | None, unet: Any) -> bool:
    """Classifier-free guidance is on: a scale > 1 and a UNet that does not take the scale as an input."""
    return guidance_scale is not None and guidance_scale > 1 and unet.config.get("time_cond_proj_dim") is None


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32):
    """Sinusoidal embedding (batch, embedding_dim) of guidance scales ``w`` (batch,), for guidance-distilled UNets
    (``time_cond_proj_dim``, Meng et al. 2023)."""
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(math.log(10000.0) / (half - 1)))
    angles = (w.to(dtype) * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if embedding_dim % 2 == 1 else emb


class StableDiffusionMixin(PromptEncodingMixin, LatentImagesMixin, StableDiffusionLoraLoaderMixin, DiffusionPipeline):
    """Base of the Stable Diffusion pipelines. ``safety_checker``, ``feature_extractor`` and ``image_encoder``
    are optional (None); ``image_encoder`` is kept for folder compatibility only (no IP-Adapter here)."""

    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    model_cpu_offload_seq = "text_encoder->unet->vae"
    _has_mask_processor = False

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Any,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        image_encoder: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__()
        _fix_legacy_configs(scheduler, unet)
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("feature_extractor is None but a safety_checker is given; it needs the feature_extractor")
        if safety_checker is None and requires_safety_checker:
            logger.warning(
                "%s has no safety checker (safety_checker=None): images are not filtered. Mind the model's license "
                "when exposing results publicly; pass requires_safety_checker=False to silence this.",
                type(self).__name__,
            )
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        # Diffusers' public pre/post-processors (our own steps use image_inputs / utils.images directly).
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        if self._has_mask_processor:
            self.mask_processor = VaeImageProcessor(
                vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
            )

    # ---- the running call's values (Diffusers-compatible properties; see call.py) ---------------------------
    guidance_scale = call_property("guidance_scale")
    _guidance_scale = guidance_scale
    guidance_rescale = call_property("guidance_rescale")
    clip_skip = call_property("clip_skip")
    cross_attention_kwargs = call_property("cross_attention_kwargs")
    num_timesteps = call_property("num_timesteps")
    _num_timesteps = num_timesteps
    interrupt = call_property("interrupt")
    _interrupt = interrupt

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the running (else the last) call guides: ``guidance_scale`` > 1 and no guidance-distilled UNet."""
        return _guides(self.guidance_scale, self.unet)

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU on the UNet (see :meth:`UNet2DConditionModel.enable_freeu`); SD 1.x: 0.9, 0.2, 1.5, 1.6."""
        if not hasattr(self.unet, "enable_freeu"):
            raise ValueError(f"the unet ({type(self.unet).__name__}) has no enable_freeu: FreeU is not available")
        self.unet.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)

    def disable_freeu(self) -> None:
        """FreeU off on the UNet."""
        self.unet.disable_freeu()

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path_or_dict: Any, **kwargs: Any):
        """Build the pipeline from one original SD 1.x / 2.x checkpoint (``.safetensors`` or ``.ckpt``); see
        :func:`torchdiffusion.single_file.load_pipeline_from_single_file`. Never downloads."""
        from ...single_file import load_pipeline_from_single_file

        return load_pipeline_from_single_file(cls, pretrained_model_link_or_path_or_dict, **kwargs)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (number of VAE levels - 1), 8 for Stable Diffusion."""
        vae = getattr(self, "vae", None)
        return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8

    # ---- the steps of a call ----------------------------------------------------------------------------
    def _guides(self, call: SDCall) -> bool:
        """Whether ``call`` starts with classifier-free guidance (a callback may still switch it off)."""
        return _guides(call.guidance_scale, self.unet)

    def _check_call(self, call: SDCall) -> None:
        """Validate the arguments every SD pipeline takes; set ``call.batch_size`` (prompts x per prompt)."""
        batch = check_prompt_arguments(
            call.prompt, call.prompt_embeds, call.negative_prompt, call.negative_prompt_embeds
        )
        if call.custom_timesteps is None and call.sigmas is None:
            check_positive_int(call.num_inference_steps, "num_inference_steps")
        elif call.custom_timesteps is not None and call.sigmas is not None:
            raise ValueError("pass either timesteps or sigmas, not both")
        check_finite_number(call.guidance_scale, "guidance_scale")
        check_finite_number(call.guidance_rescale, "guidance_rescale", 0.0, 1.0)
        check_positive_int(call.num_images_per_prompt, "num_images_per_prompt")
        check_finite_number(call.eta, "eta", 0.0)
        call.batch_size = batch * call.num_images_per_prompt
        check_generator(call.generator, call.batch_size)
        check_output_type(call.output_type, OUTPUT_TYPES)
        if call.clip_skip is not None:
            layers = getattr(getattr(self.text_encoder, "config", None), "num_hidden_layers", None)
            check_positive_int(call.clip_skip, "clip_skip", minimum=0)
            if layers is not None and call.clip_skip >= layers:
                raise ValueError(f"clip_skip must be < the text encoder's {layers} layers, got {call.clip_skip}")
        kwargs = call.cross_attention_kwargs
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(f"cross_attention_kwargs must be a dict or None, got {type(kwargs).__name__}")
        if call.callback_on_step_end is not None and not callable(call.callback_on_step_end):
            raise ValueError("callback_on_step_end must be callable: fn(pipe, step, timestep, tensors) -> dict")
        bad = [k for k in call.callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs has {bad}; allowed: {self._callback_tensor_inputs}")

    def _run(self, generate: Callable[[SDCall], Any], call: SDCall) -> Any:
        """``generate(call)`` in inference mode, with ``call`` visible to the properties callbacks read (this
        thread only); afterwards the properties show this call's values."""
        previous = enter_call(self, call)
        try:
            with torch.inference_mode():
                return generate(call)
        finally:
            exit_call(self, call, previous)

    def _prepare_denoising(self, call: SDCall) -> dict[str, Any]:
        """Encode the prompts, copy the scheduler and set its timesteps (only the tail ``call.strength`` keeps,
        when set). Fills ``call.scheduler``, ``call.timesteps``, ``call.begin_index`` and ``call.num_timesteps``;
        returns the state for :func:`denoise`: ``prompt_embeds`` (doubled [negative, positive] under
        classifier-free guidance) and ``negative_prompt_embeds``."""
        device = self.device
        cfg = self._guides(call)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            call.prompt,
            device,
            call.num_images_per_prompt,
            cfg,
            call.negative_prompt,
            prompt_embeds=call.prompt_embeds,
            negative_prompt_embeds=call.negative_prompt_embeds,
            lora_scale=(call.cross_attention_kwargs or {}).get("scale"),
            clip_skip=call.clip_skip,
        )
        scheduler = call.scheduler = fresh_scheduler(self.scheduler)
        steps = set_timesteps(
            scheduler, call.num_inference_steps, device, timesteps=call.custom_timesteps, sigmas=call.sigmas
        )
        if call.strength is not None:
            custom = call.custom_timesteps is not None or call.sigmas is not None
            n = len(steps) if custom else call.num_inference_steps
            steps, call.begin_index = strength_timesteps(scheduler, n, call.strength)
        call.timesteps = steps
        call.num_timesteps = len(steps)
        return {
            "prompt_embeds": torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
        }

    def _denoise_and_finish(
        self,
        call: SDCall,
        latents: torch.Tensor,
        state: dict[str, Any],
        extra_inputs: Sequence[str] = (),
        after_step: Callable | None = None,
    ) -> Any:
        """Run :func:`denoise` with the guided UNet (``extra_inputs`` from ``state`` appended as channels), then
        decode, filter and convert (see :meth:`_finish`)."""
        timestep_cond = self._timestep_cond(call.batch_size, call.guidance_scale, self.device, latents.dtype)
        latents = denoise(
            self,
            call.scheduler,
            latents,
            self._predictor(call, timestep_cond, extra_inputs=extra_inputs),
            call.timesteps,
            generator=call.generator,
            step_options={"eta": call.eta},
            state=state,
            after_step=after_step,
            callback_on_step_end=call.callback_on_step_end,
            callback_on_step_end_tensor_inputs=call.callback_on_step_end_tensor_inputs,
            begin_index=call.begin_index,
            interrupted=call.interrupted,
        )
        return self._finish(latents, call.output_type, call.return_dict, state["prompt_embeds"].dtype)

    def _check_size(self, height: Any, width: Any) -> None:
        f = self.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            check_positive_int(value, name)
            if value % f:
                raise ValueError(f"{name} must be divisible by vae_scale_factor={f}, got {value}")

    def _default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f = self.vae_scale_factor
        return (height or h * f), (width or w * f)

    # ---- latents ---------------------------------------------------------------------------------------
    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device | str,
        generator: Any,
        latents: torch.Tensor | None = None,
        *,
        scheduler: Any,
    ) -> torch.Tensor:
        """Initial noise (batch, channels, height/f, width/f) times ``scheduler.init_noise_sigma``.

        Diffusers' arguments, plus ``scheduler``: the call's own scheduler copy (set up for this call's steps),
        where Diffusers reads the pipeline's shared ``self.scheduler``.
        """
        f = self.vae_scale_factor
        shape = (batch_size, num_channels_latents, int(height) // f, int(width) // f)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = check_latents(latents, shape, f).to(device)
        return latents * scheduler.init_noise_sigma

    def get_guidance_scale_embedding(self, w: torch.Tensor, embedding_dim: int = 512, dtype=torch.float32):
        return guidance_scale_embedding(w, embedding_dim, dtype)

    def _timestep_cond(self, total: int, guidance_scale: float, device, dtype) -> torch.Tensor | None:
        dim = self.unet.config.get("time_cond_proj_dim")
        if dim is None:
            return None
        w = torch.full((total,), guidance_scale - 1.0)
        return guidance_scale_embedding(w, dim).to(device=device, dtype=dtype)

    def _predictor(
        self, call: SDCall, timestep_cond: torch.Tensor | None = None, extra_inputs: Sequence[str] = ()
    ) -> Callable:
        """The ``predict(x, t, state)`` for :func:`denoise`: the UNet on ``x`` (doubled for classifier-free
        guidance, ``extra_inputs`` from ``state`` appended as channels), then guidance and guidance rescale with
        ``call``'s values (read every step: a callback may change them)."""
        unet = self.unet
        time_cond = unet.config.get("time_cond_proj_dim") is not None

        def predict(x: torch.Tensor, t: torch.Tensor, state: dict) -> torch.Tensor:
            scale = call.guidance_scale
            cfg = scale > 1 and not time_cond  # read every step: a callback may switch guidance off
            x_in = torch.cat([x, x]) if cfg else x
            if extra_inputs:
                x_in = torch.cat([x_in, *(state[k] for k in extra_inputs)], dim=1)
            out = unet(
                x_in,
                t,
                encoder_hidden_states=state["prompt_embeds"],
                timestep_cond=timestep_cond,
                cross_attention_kwargs=call.cross_attention_kwargs,
                return_dict=False,
            )[0]
            if not cfg:
                return out
            uncond, cond = out.chunk(2)
            guided = classifier_free_guidance(uncond, cond, scale)
            return rescale_guidance(guided, cond, call.guidance_rescale) if call.guidance_rescale > 0 else guided

        return predict
