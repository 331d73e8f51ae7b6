"""Tiny models and runs shared by the training tests (seconds on a CPU)."""

from __future__ import annotations

from typing import Any

from torchdiffusion import DDPMScheduler, UNet2DModel


def tiny_unet(resolution: int = 8, channels: int = 1, num_class_embeds: int | None = None) -> UNet2DModel:
    return UNet2DModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=num_class_embeds,
    )


def tiny_scheduler(**kwargs: Any) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", **kwargs)


FAST = {
    "batch_size": 4,
    "max_steps": 4,
    "checkpointing_steps": 2,
    "sample_steps": 4,
    "num_sample_images": 4,
    "sample_inference_steps": 2,
    "log_steps": 2,
    "progress_bar": False,
    "lr_warmup_steps": 1,
}
