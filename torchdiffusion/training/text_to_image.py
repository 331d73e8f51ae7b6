"""Text-to-image fine-tuning of a Stable Diffusion UNet (what Diffusers' ``train_text_to_image.py`` and
``train_text_to_image_lora.py`` do), as a task of the shared :class:`~torchdiffusion.training.trainer.Trainer`.

The VAE and the text encoder are frozen; images become latents (sampled from the VAE's latent distribution, times
its ``scaling_factor``) and captions become CLIP embeddings; the UNet learns to denoise the latents given the
embeddings. Either every UNet weight trains (with EMA), or LoRA adapters through ``peft``
(``LoraConfig(r, lora_alpha, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])``)
on the UNet and optionally the text encoder. What is frozen is computed once when it can be (:mod:`.latent_cache`).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch

from .latent_cache import FrozenEncoders, LatentCache

UNET_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
TEXT_ENCODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


class TextConditionedUNet(torch.nn.Module):
    """The module a text-to-image run optimises: ``unet``, and ``text_encoder`` when that trains too (LoRA).

    ``forward(sample, timestep, encoder_hidden_states=None, input_ids=None)`` -> the UNet's prediction; with
    ``input_ids`` the embeddings come from ``text_encoder`` inside the call (so its adapters get gradients)."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    @property
    def config(self) -> Any:
        return self.unet.config

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        if self.text_encoder is not None and hasattr(self.text_encoder, "gradient_checkpointing_enable"):
            self.text_encoder.gradient_checkpointing_enable()

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_ids is not None:
            encoder_hidden_states = self.text_encoder(input_ids, return_dict=False)[0]
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


def _lora_config(rank: int, alpha: float | None, targets: tuple[str, ...]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, init_lora_weights="gaussian",
                      target_modules=list(targets))  # fmt: skip


def _check_positive(value: Any, name: str, kind: type = int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise ValueError(f"{name} must be a positive {kind.__name__} or None, got {value!r}")


class TextToImageTask:
    """Fine-tune the UNet of ``pipeline`` (a :class:`StableDiffusionPipeline`, or its folder / Hub id) on
    captioned images.

    ``lora_rank``: None trains every UNet weight (EMA allowed); an int adds LoRA adapters of that rank
    (``lora_alpha``: default the rank) and trains only them. ``text_encoder_lora``: adapters on the text encoder
    too (its embeddings are then computed every step). ``cache_latents``: None caches latent distributions and
    caption embeddings when valid (frozen text encoder, no random crop/flip), True insists, False never caches.
    ``seed``: the adapters' random initial weights (use the run's seed). ``load_kwargs`` go to
    ``DiffusionPipeline.from_pretrained`` when ``pipeline`` is a folder or Hub id (``revision``, ``cache_dir``...).
    """

    latent = True
    unet_lora_targets: tuple[str, ...] = UNET_LORA_TARGETS  # the modules that get adapters (a subclass may widen)

    def __init__(
        self,
        pipeline: Any,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        text_encoder_lora: bool = False,
        cache_latents: bool | None = None,
        seed: int = 0,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        _check_positive(lora_rank, "lora_rank")
        _check_positive(lora_alpha, "lora_alpha", float)
        if text_encoder_lora and lora_rank is None:
            raise ValueError("text_encoder_lora=True needs lora_rank (the text encoder trains only through LoRA)")
        if cache_latents not in (None, True, False):
            raise ValueError(f"cache_latents must be None, True or False, got {cache_latents!r}")
        if cache_latents and text_encoder_lora:
            raise ValueError("cache_latents=True with text_encoder_lora=True: the caption embeddings change as the "
                             "text encoder trains and cannot be cached")  # fmt: skip
        if isinstance(pipeline, (str, os.PathLike)):
            from ..pipelines.pipeline import DiffusionPipeline

            self.base_name = os.fspath(pipeline)
            pipeline = DiffusionPipeline.from_pretrained(pipeline, **(load_kwargs or {}))
        else:
            self.base_name = getattr(pipeline, "name_or_path", None) or type(pipeline).__name__
        missing = [c for c in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
                   if getattr(pipeline, c, None) is None]  # fmt: skip
        if missing:
            raise ValueError(f"pipeline must be a Stable Diffusion pipeline; it has no {', '.join(missing)}")
        self.base = pipeline
        self.vae, self.text_encoder, self.tokenizer = pipeline.vae, pipeline.text_encoder, pipeline.tokenizer
        self.vae.requires_grad_(False).eval()
        self.text_encoder.requires_grad_(False).eval()
        unet = pipeline.unet
        self.lora_rank, self.lora_alpha, self.text_encoder_lora = lora_rank, lora_alpha, bool(text_encoder_lora)
        if lora_rank is not None:
            from ..loaders import peft_utils

            unet.requires_grad_(False)
            with torch.random.fork_rng(devices=[]):  # peft draws the initial lora_A from the global generator
                torch.manual_seed(seed)
                unet.add_adapter(_lora_config(lora_rank, lora_alpha, tuple(self.unet_lora_targets)))
                if text_encoder_lora:
                    config = _lora_config(lora_rank, lora_alpha, TEXT_ENCODER_LORA_TARGETS)
                    peft_utils.inject(self.text_encoder, config, "default")
                    self.text_encoder.train()
        else:
            unet.requires_grad_(True)
        self.supports_ema = lora_rank is None
        self.cache_latents = cache_latents
        self.model = TextConditionedUNet(unet, self.text_encoder if text_encoder_lora else None)
        from ..schedulers.ddpm import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.resolution: int | None = None
        self.encoders: FrozenEncoders | None = None
        self.cache: LatentCache | None = None

    # ---- the run ------------------------------------------------------------------------------------------------
    def dropout_prob(self, config: Any) -> float:
        return config.caption_dropout_prob

    def setup(self, accelerator: Any, config: Any, dataset: Any) -> Any:
        """Check the data (captions, size), move the frozen parts to the device and build the cache if it is on;
        returns what the run iterates over (the cache, or ``dataset``)."""
        first = dataset[0]
        if "captions" not in first:
            raise ValueError(
                "dataset items have no 'captions': text-to-image training needs captioned images (a folder with "
                "metadata.jsonl or name.txt captions, or a datasets.Dataset with caption_column=...)"
            )
        size = tuple(first["images"].shape[-2:])
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if size[0] % factor or size[1] % factor:
            raise ValueError(f"resolution {size} must be a multiple of the VAE's downscale factor {factor}")
        self.resolution = size[0]
        device = accelerator.device
        self.vae.to(device)
        self.text_encoder.to(device)
        self.encoders = FrozenEncoders(self.vae, self.text_encoder, self.tokenizer, device, accelerator.autocast)
        valid = not self.text_encoder_lora and not getattr(dataset, "random_augmentation", True)
        if self.cache_latents and not valid:
            raise ValueError("cache_latents=True but the data set augments images at random (random crop or flip): "
                             "each visit gives another image; turn the augmentation or the cache off")  # fmt: skip
        if self.cache_latents is False or not valid:
            return dataset
        self.cache = LatentCache(dataset, self.encoders, config.batch_size, config.progress_bar and
                                 accelerator.is_main_process)  # fmt: skip
        return self.cache

    def sample_shape(self, batch: dict[str, Any]) -> tuple[int, ...]:
        if "latent_mean" in batch:
            return tuple(batch["latent_mean"].shape[1:])
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        h, w = batch["images"].shape[-2:]
        return (self.vae.config.latent_channels, h // factor, w // factor)

    def inputs(
        self, batch: dict[str, Any], drop: torch.Tensor, latent_noise: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Latents ``x0`` ``(B, 4, h, w)`` and ``encoder_hidden_states`` (or ``input_ids`` when the text encoder
        trains); captions where ``drop`` is True become the empty caption."""
        enc = self.encoders
        if "latent_mean" in batch:
            mean, logvar = batch["latent_mean"].to(device), batch["latent_logvar"].to(device)
            index = batch["caption_index"].clone()
            index[drop] = self.cache.empty_index
            kwargs = {"encoder_hidden_states": self.cache.embeddings[index].to(device)}
        else:
            mean, logvar = enc.latent_dist(batch["images"])
            captions = ["" if d else c for c, d in zip(batch["captions"], drop.tolist())]
            if self.text_encoder_lora:
                kwargs = {"input_ids": enc.tokenize(captions)}
            else:
                kwargs = {"encoder_hidden_states": enc.embed(captions)}
        return enc.sample_latents(mean, logvar, latent_noise.to(device)), kwargs

    # ---- what it hands out ------------------------------------------------------------------------------------
    def pipeline(self, model: TextConditionedUNet, noise_scheduler: Any) -> Any:
        """A :class:`StableDiffusionPipeline` of the base model with the trained UNet (and text encoder)."""
        scheduler = self.base.scheduler
        prediction = noise_scheduler.config.get("prediction_type")
        if scheduler.config.get("prediction_type") != prediction:
            scheduler = type(scheduler).from_config(scheduler.config, prediction_type=prediction)
        parts = {**self.base.components, "unet": model.unet, "scheduler": scheduler}
        if model.text_encoder is not None:
            parts["text_encoder"] = model.text_encoder.eval()
        parts = {k: v for k, v in parts.items() if k != "requires_safety_checker"}
        pipe = type(self.base)(**parts, requires_safety_checker=self.base.config.get("requires_safety_checker", False))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def wants_samples(self, config: Any) -> bool:
        return bool(config.validation_prompts and config.num_validation_images and config.sample_inference_steps)

    def sample_grid(self, pipe: Any, config: Any, num_inference_steps: int) -> tuple[torch.Tensor, int | None]:
        """The validation grid: one row per prompt of ``config.validation_prompts``, ``num_validation_images``
        columns (image ``i`` seeded ``seed + i``), images ``(N, 3, H, W)`` in [-1, 1]."""
        per = config.num_validation_images
        prompts = [p for p in config.validation_prompts for _ in range(per)]
        generators = [torch.Generator().manual_seed(config.seed + i) for i in range(len(prompts))]
        size = self.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        images = pipe(prompts, height=size, width=size, num_inference_steps=num_inference_steps,
                      guidance_scale=config.sample_guidance_scale, generator=generators, output_type="pt").images
        return images * 2 - 1, per  # fmt: skip

    def lora_layers(self, model: TextConditionedUNet) -> dict[str, dict[str, torch.Tensor]]:
        """The adapters in Diffusers' key layout: ``{"unet_lora_layers": ..., "text_encoder_lora_layers": ...}``."""
        from peft.utils import get_peft_model_state_dict

        from ..loaders import convert_state_dict_to_diffusers

        layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(model.unet))}
        if model.text_encoder is not None:
            text = get_peft_model_state_dict(model.text_encoder)
            layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(text)
        return layers

    def save(self, pipe: Any, path: str | os.PathLike, step: int, config: Any) -> str:
        """Full fine-tune: the pipeline folder. LoRA: ``pytorch_lora_weights.safetensors`` (Diffusers' layout).
        Both with a model card ``README.md``."""
        from .model_card import write_model_card

        path = os.fspath(path)
        if self.lora_rank is None:
            pipe.save_pretrained(path)
        else:
            layers = self.lora_layers(TextConditionedUNet(pipe.unet, pipe.text_encoder if self.text_encoder_lora
                                                          else None))  # fmt: skip
            type(pipe).save_lora_weights(path, **layers, safe_serialization=True)
        grid = os.path.join(config.output_dir, "samples.png")
        if os.path.isfile(grid) and not os.path.exists(os.path.join(path, "samples.png")):
            shutil.copyfile(grid, os.path.join(path, "samples.png"))  # saved elsewhere (a Hub upload): the card's grid
        write_model_card(path, self, step, config)
        return path
