"""Shared bits of the scheduler tests: a fixed smooth stand-in model and a hand-written denoising loop."""

from __future__ import annotations

import torch


def fake_model(x: torch.Tensor, t) -> torch.Tensor:
    return 0.7 * torch.sin(1.3 * x + float(t) / 300.0) + 0.1 * x


def start(scheduler, shape=(2, 2, 4, 4), seed=0) -> torch.Tensor:
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return noise * float(getattr(scheduler, "init_noise_sigma", 1.0))


def run(scheduler, x: torch.Tensor, **step_kwargs) -> torch.Tensor:
    for t in scheduler.timesteps:
        x = scheduler.step(fake_model(scheduler.scale_model_input(x, t), t), t, x, **step_kwargs).prev_sample
    return x
