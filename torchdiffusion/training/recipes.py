"""Ready-made choices for the CLI and the one-object API: a UNet sized for the resolution, the noise scheduler,
and ``train()`` that wires data + model + Trainer together. (The samplers that draw from a trained model are
named in :mod:`torchdiffusion.schedulers.samplers`.)"""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import TrainingConfig


def default_block_channels(resolution: int) -> tuple[int, ...]:
    """Channel widths per UNet level: 3 levels up to 16 px, 4 at 32 px, then wider (CPU-friendly sizes)."""
    if resolution <= 16:
        return (32, 64, 64)
    if resolution <= 32:
        return (32, 64, 64, 128)
    return (64, 128, 128, 256)


def default_unet(
    resolution: int,
    channels: int,
    num_class_embeds: int | None = None,
    block_out_channels: tuple[int, ...] | None = None,
    layers_per_block: int = 2,
    attention_levels: int = 2,
):
    """A :class:`UNet2DModel` like the tutorials' UNet (ResNet blocks, self-attention on the ``attention_levels``
    lowest resolutions) for ``resolution`` px images with ``channels`` channels."""
    from ..models.unet_2d import UNet2DModel

    widths = tuple(block_out_channels or default_block_channels(resolution))
    n = len(widths)
    if resolution % 2 ** (n - 1):
        raise ValueError(f"resolution={resolution} must be divisible by {2 ** (n - 1)} for a {n}-level UNet")
    attention_levels = max(0, min(attention_levels, n - 1))
    down = tuple("AttnDownBlock2D" if i >= n - attention_levels else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if i < attention_levels else "UpBlock2D" for i in range(n))
    groups = math.gcd(32, *widths)
    return UNet2DModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=layers_per_block,
        block_out_channels=widths,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=min(32, groups),
        attention_head_dim=min(32, widths[-1]),
        num_class_embeds=num_class_embeds,
    )


def default_noise_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2", **kwargs):
    """The training noise schedule (the cosine schedule by default), as a :class:`DDPMScheduler`."""
    from ..schedulers.ddpm import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, **kwargs)


def train(
    dataset: str = "digits",
    resolution: int = 16,
    class_conditional: bool = False,
    channels: int | None = None,
    block_out_channels: tuple[int, ...] | None = None,
    layers_per_block: int = 2,
    center_crop: bool = True,
    random_flip: bool | None = None,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "squaredcos_cap_v2",
    **options: Any,
):
    """Train a default UNet on ``dataset`` (``"digits"``, a folder or a Hub name); ``options`` are
    :class:`TrainingConfig` fields. Returns the :class:`~torchdiffusion.training.trainer.TrainingResult`."""
    from .sources import load_training_dataset
    from .trainer import Trainer

    config = TrainingConfig(**options)
    data = load_training_dataset(
        dataset,
        resolution,
        channels=channels,
        center_crop=center_crop,
        random_flip=random_flip,
        labels=class_conditional,
    )
    if class_conditional and not data.num_classes:
        raise ValueError(f"class_conditional=True but dataset {dataset!r} has no class labels")
    num_class_embeds = None
    if class_conditional:
        num_class_embeds = data.num_classes + (1 if config.class_dropout_prob > 0 else 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = default_unet(resolution, data.channels, num_class_embeds, block_out_channels, layers_per_block)
    scheduler = default_noise_scheduler(num_train_timesteps, beta_schedule)
    return Trainer(model, scheduler, data, config).train()


TEXT_TO_IMAGE_DEFAULTS: dict[str, Any] = {
    "batch_size": 16,
    "learning_rate": 1e-4,
    "lr_schedule": "constant",
    "lr_warmup_steps": 0,
    "adam_betas": (0.9, 0.999),
    "weight_decay": 1e-2,
    "ema_decay": 0.9999,
    "ema_warmup": False,
    "sample_guidance_scale": 7.5,
    "sample_inference_steps": 25,
}
"""The settings of Diffusers' ``train_text_to_image.py`` / ``train_text_to_image_lora.py`` where ours differ
(EMA as its ``--use_ema``: decay 0.9999, ``min(decay, (1 + k) / (10 + k))``)."""


def train_text_to_image(
    pretrained: Any,
    dataset: Any,
    caption_column: str | None = None,
    image_column: str | None = None,
    resolution: int | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    text_encoder_lora: bool = False,
    cache_latents: bool | None = None,
    center_crop: bool = True,
    random_flip: bool = False,
    **options: Any,
):
    """Fine-tune the UNet of ``pretrained`` (a Stable Diffusion folder, Hub id or pipeline) on ``dataset`` (a
    folder with ``metadata.jsonl`` or ``name.txt`` captions, ``"captioned-digits"``, a ``datasets.Dataset`` or a Hub
    name), fully or with LoRA adapters of ``lora_rank`` (see :class:`~.text_to_image.TextToImageTask`).
    ``resolution`` defaults to the UNet's ``sample_size`` times the VAE factor; ``options`` are
    :class:`TrainingConfig` fields (defaults: :data:`TEXT_TO_IMAGE_DEFAULTS`). Returns the
    :class:`~torchdiffusion.training.trainer.TrainingResult`; the data are checked before the model loads."""
    from .sources import load_captioned_dataset
    from .text_to_image import TextToImageTask
    from .trainer import Trainer

    config = TrainingConfig(**{**TEXT_TO_IMAGE_DEFAULTS, **options})
    task = TextToImageTask(pretrained, lora_rank, lora_alpha, text_encoder_lora, cache_latents, config.seed)
    if resolution is None:
        factor = 2 ** (len(task.vae.config.block_out_channels) - 1)
        resolution = int(task.base.unet.config.sample_size) * factor
    data = load_captioned_dataset(dataset, resolution, caption_column, image_column, center_crop, random_flip)
    return Trainer(task, dataset=data, config=config).train()


LCM_LORA_DEFAULTS: dict[str, Any] = {
    **TEXT_TO_IMAGE_DEFAULTS,
    "learning_rate": 1e-4,
    "lr_warmup_steps": 0,
    "max_grad_norm": 1.0,
    "use_ema": False,
    "sample_guidance_scale": 1.0,
    "sample_inference_steps": 4,
}
"""The settings of Diffusers' ``train_lcm_distill_lora_sd_wds.py`` where ours differ (the grids: 4 LCM steps,
guidance 1)."""


def distill_lcm_lora(
    pretrained: Any,
    dataset: Any,
    output_dir: str,
    lora_rank: int = 16,
    lora_alpha: float | None = None,
    max_steps: int = 1000,
    time_limit_minutes: float | None = None,
    w_min: float = 3.0,
    w_max: float = 12.0,
    num_ddim_timesteps: int = 50,
    huber_c: float = 1e-3,
    timestep_scaling: float = 10.0,
    lora_targets: Any = "attention",
    caption_column: str | None = None,
    image_column: str | None = None,
    resolution: int | None = None,
    cache_latents: bool | None = None,
    center_crop: bool = True,
    **options: Any,
):
    """Distil ``pretrained`` (a Stable Diffusion folder, Hub id, pipeline, or the embedded model's name) into an
    LCM-LoRA on ``dataset``'s captioned images (as :func:`train_text_to_image` takes them, or a built map-style
    data set), so that it samples in
    2-8 steps with ``LCMScheduler`` and ``guidance_scale=1``: see
    :class:`~torchdiffusion.training.consistency.LatentConsistencyTask` for the method and its arguments.
    Writes ``output_dir/pytorch_lora_weights.safetensors`` (Diffusers' layout), ``scheduler_config.json`` and
    ``README.md``; ``options`` are :class:`TrainingConfig` fields (defaults: :data:`LCM_LORA_DEFAULTS`). Returns
    the :class:`~torchdiffusion.training.trainer.TrainingResult`."""
    from .consistency import LatentConsistencyTask
    from .sources import load_captioned_dataset
    from .trainer import Trainer

    config = TrainingConfig(**{**LCM_LORA_DEFAULTS, **options, "output_dir": output_dir, "max_steps": max_steps,
                               "time_limit_minutes": time_limit_minutes})  # fmt: skip
    task = LatentConsistencyTask(pretrained, lora_rank, lora_alpha, w_min, w_max, num_ddim_timesteps,
                                 timestep_scaling, huber_c, lora_targets, cache_latents, config.seed)  # fmt: skip
    if resolution is None:
        factor = 2 ** (len(task.vae.config.block_out_channels) - 1)
        resolution = int(task.base.unet.config.sample_size) * factor
    if isinstance(dataset, torch.utils.data.Dataset):  # already built (items with "images" and "captions")
        data = dataset
    else:
        data = load_captioned_dataset(dataset, resolution, caption_column, image_column, center_crop, False)
    return Trainer(task, dataset=data, config=config).train()
