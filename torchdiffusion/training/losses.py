"""The denoising objective: noise (with optional offset noise), the target for each ``prediction_type``, and
per-sample loss weights (min-SNR-gamma).

For ``x_t = alpha_t x0 + sigma_t eps`` the signal-to-noise ratio is ``snr_t = alpha_t^2 / sigma_t^2``.
Min-SNR-gamma weighting (Hang et al. 2023, eq. 8) clips the x0-space weight at ``gamma``; expressed for what the
model predicts it is ``min(snr, gamma) / snr`` (epsilon), ``min(snr, gamma) / (snr + 1)`` (v) and
``min(snr, gamma)`` (sample).
"""

from __future__ import annotations

import torch

from ..core.prediction import PREDICTION_TYPES, get_velocity
from ..core.schedules import TrainedSchedule
from .data import mix_seed

LOSS_WEIGHTINGS: tuple[str, ...] = ("none", "min_snr")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}")
    return prediction_type


def sample_noise(
    shape: tuple[int, ...], generator: torch.Generator | None = None, noise_offset: float = 0.0
) -> torch.Tensor:
    """Standard normal noise ``shape`` (B, C, H, W) drawn on the CPU; with ``noise_offset`` > 0 a per-channel constant
    ``noise_offset * N(0, 1)`` of shape (B, C, 1, 1) is added ("offset noise": lets the model shift mean brightness).
    """
    noise = torch.randn(shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((*shape[:2], *([1] * (len(shape) - 2))), generator=generator)
    return noise


def draw_step_noise(
    seed: int,
    micro_step: int,
    shape: tuple[int, ...],
    num_timesteps: int,
    noise_offset: float = 0.0,
    dropout_prob: float = 0.0,
    latent: bool = False,
    part: slice = slice(None),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Everything random in micro-batch ``micro_step`` of a run, drawn on the CPU for the *global* batch ``shape``
    ``(B, C, H, W)`` and cut to this process's ``part``: the noise (with ``noise_offset``), the timesteps ``(B,)``,
    the condition-dropout mask ``(B,)`` (True with probability ``dropout_prob``) from one generator seeded by
    ``(seed, "noise", micro_step)``; with ``latent``, the standard normal draw ``(B, C, H, W)`` that samples each
    ``x0`` from its latent distribution (``mean + std * draw``), from a generator seeded by
    ``(seed, "latent", micro_step)``."""
    g = torch.Generator().manual_seed(mix_seed(seed, "noise", micro_step))
    noise = sample_noise(shape, g, noise_offset)
    timesteps = torch.randint(0, num_timesteps, (shape[0],), generator=g)
    drop = torch.rand(shape[0], generator=g) < dropout_prob
    latent_noise = None
    if latent:
        latent_noise = torch.randn(shape, generator=torch.Generator().manual_seed(mix_seed(seed, "latent", micro_step)))
        latent_noise = latent_noise[part]
    return noise[part], timesteps[part], drop[part], latent_noise


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``alpha_bar_t / (1 - alpha_bar_t)`` per sample: ``(B,)`` float32 on ``timesteps``' device
    (:meth:`~torchdiffusion.core.schedules.TrainedSchedule.snr` of the table)."""
    return TrainedSchedule.from_alphas_cumprod(alphas_cumprod).snr(timesteps)


def training_target(
    prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor
) -> torch.Tensor:
    """What the model should output for ``x_t = alpha_t x0 + sigma_t noise`` (``alpha_t``, ``sigma_t``: ``(B,)``)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return get_velocity(x0, noise, alpha_t, sigma_t)
    check_prediction_type(prediction_type)
    raise AssertionError("unreachable")


def loss_weights(snr_t: torch.Tensor, weighting: str, prediction_type: str, gamma: float = 5.0) -> torch.Tensor | None:
    """Per-sample weights ``(B,)`` for ``weighting`` ("none" -> None, "min_snr" -> min-SNR-``gamma``)."""
    if weighting == "none":
        return None
    if weighting != "min_snr":
        raise ValueError(f"loss_weighting must be one of {list(LOSS_WEIGHTINGS)}, got {weighting!r}")
    clipped = snr_t.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr_t.clamp(min=1e-8)
    if prediction_type == "v_prediction":
        return clipped / (snr_t + 1)
    if prediction_type == "sample":
        return clipped
    check_prediction_type(prediction_type)
    raise AssertionError("unreachable")


def diffusion_loss(
    model_output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error in float32: per-sample mean over (C, H, W), weighted by ``weights`` ``(B,)``, averaged."""
    per_sample = (model_output.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()
