"""Noise schedules: betas -> alphas_cumprod -> sigmas.

Notation (DDPM, Ho et al. 2020; k-diffusion, Karras et al. 2022):

* ``beta_t``            per-step noise variance, ``t = 0 .. T-1``
* ``alpha_bar_t``       ``prod_{s<=t} (1 - beta_s)`` (Diffusers' ``alphas_cumprod``)
* ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``   (variance preserving form)
* ``sigma_t``           ``sqrt((1 - alpha_bar_t) / alpha_bar_t)``: the same noise level in variance exploding form,
  ``x_t / sqrt(alpha_bar_t) = x0 + sigma_t eps``.

Everything here is computed in float64 (callers cast at use) so that long cumulative products do not drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2", "exp", "laplace", "sigmoid")
"""Every ``beta_schedule`` value the schedulers accept."""


def _alpha_bar_fn(kind: str):
    """``alpha_bar(t)`` for continuous ``t`` in [0, 1] (used by :func:`betas_for_alpha_bar`)."""
    if kind == "cosine":  # Nichol & Dhariwal 2021, eq. 17, with s = 0.008
        return lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    if kind == "exp":
        return lambda t: math.exp(-12.0 * t)
    if kind == "laplace":  # log-SNR follows a Laplace distribution (Hang et al. 2024)

        def laplace(t: float) -> float:
            lmb = -0.5 * math.copysign(1.0, 0.5 - t) * math.log(1 - 2 * abs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))

        return laplace
    raise ValueError(f"alpha_transform_type={kind!r} is not supported; use 'cosine', 'exp' or 'laplace'")


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, max_beta: float = 0.999, alpha_transform_type: str = "cosine"
) -> torch.Tensor:
    """Discretise a continuous ``alpha_bar(t)``: ``beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)``.

    Returns a float64 tensor of shape ``(num_diffusion_timesteps,)``.
    """
    fn = _alpha_bar_fn(alpha_transform_type)
    n = num_diffusion_timesteps
    betas = [min(1.0 - fn((i + 1) / n) / fn(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float64)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``sqrt(alpha_bar)`` so the last step has zero SNR (Lin et al. 2023, Algorithm 1).

    ``sqrt(alpha_bar_0)`` is kept, ``sqrt(alpha_bar_{T-1})`` becomes exactly 0. Input and output: betas ``(T,)``.
    """
    betas = betas.to(torch.float64)
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}")


def make_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """The betas of a training schedule as a float64 tensor of shape ``(num_train_timesteps,)``.

    ``trained_betas`` (if given) wins over ``beta_schedule``; ``rescale_betas_zero_snr`` is applied last.
    Arguments are validated here, so every scheduler gives the same errors.
    """
    if trained_betas is not None:
        betas = torch.as_tensor(np.asarray(trained_betas, dtype=np.float64))
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"trained_betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all() or (betas < 0).any() or (betas > 1).any():
            raise ValueError("trained_betas must be finite and lie in [0, 1]")
    else:
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, (int, np.integer)):
            raise TypeError(f"num_train_timesteps must be an int, got {num_train_timesteps!r}")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        n = int(num_train_timesteps)
        if beta_schedule in ("linear", "scaled_linear", "sigmoid"):
            for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
                if not (isinstance(v, (int, float)) and 0 <= v < 1):
                    raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":  # linear in sqrt(beta): Stable Diffusion's schedule
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            betas = betas_for_alpha_bar(n, alpha_transform_type="cosine")
        elif beta_schedule == "sigmoid":
            betas = torch.sigmoid(torch.linspace(-6, 6, n, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
        else:  # exp, laplace
            betas = betas_for_alpha_bar(n, alpha_transform_type=beta_schedule)
    # Betas are rounded to float32, the precision Diffusers stores them in and models were trained with: this
    # matters near beta = 1 (cosine, zero SNR), where 1 - beta keeps only a few float32 digits. Everything
    # computed from them (alpha_bar, sigmas) stays in float64.
    betas = betas.float().double()
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas).float().double()
    return betas


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` in float64, shape ``(T,)``."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Variance-exploding noise levels ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``, shape ``(T,)``."""
    ab = alphas_cumprod.to(torch.float64)
    return ((1.0 - ab) / ab).sqrt()


class NoiseSchedule:
    """A training noise schedule: the ``alpha_bar`` table models were trained against, plus float64 views.

    The table is built the way Diffusers builds it during training (float32 betas, float32 cumulative product),
    because those rounded values *are* the noise levels a Diffusers-trained model learned: ``1 - alpha_bar`` at
    small t keeps only a few float32 digits, and recomputing it more precisely would move the noise levels the
    model expects (by up to 1e-3 relative). Everything derived from the table (coefficients, sigmas) is computed
    in float64 from these values.

    Attributes (all shape ``(T,)``): ``betas``, ``alphas``, ``alphas_cumprod`` (float32, as Diffusers exposes them;
    float32 also avoids silently promoting users' tensors to float64) and ``betas64``, ``alphas_cumprod64``.
    """

    def __init__(self, betas64: torch.Tensor) -> None:
        self.betas = betas64.float()
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.betas64 = self.betas.double()
        self.alphas_cumprod64 = self.alphas_cumprod.double()

    @classmethod
    def from_config(cls, config) -> NoiseSchedule:
        """Build from a scheduler config holding the usual keys (missing ones take Diffusers' defaults)."""
        get = config.get
        return cls(
            make_betas(
                get("num_train_timesteps", 1000),
                get("beta_start", 0.0001),
                get("beta_end", 0.02),
                get("beta_schedule", "linear"),
                get("trained_betas"),
                get("rescale_betas_zero_snr", False),
            )
        )

    def __len__(self) -> int:
        return self.betas64.shape[0]

    def alpha_bar(self, t: int, final: float = 1.0) -> float:
        """``alpha_bar_t`` as a Python float; ``t < 0`` means "after the last step" and gives ``final``."""
        return float(self.alphas_cumprod64[t]) if t >= 0 else float(final)
