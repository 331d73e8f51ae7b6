"""Training noise schedules: betas -> alphas_cumprod -> sigmas, and :class:`TrainedSchedule`, the one object that
schedulers, the Trainer, ``torchdiffusion.simple`` and the functional sampler ask for trained noise levels, SNR,
noised samples (``add_noise``) and velocity targets.

Notation (DDPM, Ho et al. 2020; k-diffusion, Karras et al. 2022):

* ``beta_t``            per-step noise variance, ``t = 0 .. T-1``
* ``alpha_bar_t``       ``prod_{s<=t} (1 - beta_s)`` (Diffusers' ``alphas_cumprod``)
* ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``   (variance preserving form)
* ``sigma_t``           ``sqrt((1 - alpha_bar_t) / alpha_bar_t)``: the same noise level in variance exploding form,
  ``x_t / sqrt(alpha_bar_t) = x0 + sigma_t eps``.

Betas are computed in float64 and rounded to float32 (see :func:`make_betas`); everything derived from the
float32 table is computed in float64 (callers cast at use), except the float32 sigmas of the multistep schedulers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .prediction import ALPHA_BAR_FLOOR, add_noise, get_velocity

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
    """The betas of a training schedule (float32 values, as Diffusers builds them) as a float64 tensor of shape
    ``(num_train_timesteps,)``.

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
        # The closed-form schedules are evaluated in float32, as Diffusers does: float32 linspace differs from a
        # rounded float64 one by an ulp here and there, and a 1000-step DDPM loop shows it.
        f32 = torch.float32
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=f32)
        elif beta_schedule == "scaled_linear":  # linear in sqrt(beta): Stable Diffusion's schedule
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=f32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            betas = betas_for_alpha_bar(n, alpha_transform_type="cosine")
        elif beta_schedule == "sigmoid":
            betas = torch.sigmoid(torch.linspace(-6, 6, n, dtype=f32)) * (beta_end - beta_start) + beta_start
        else:  # exp, laplace
            betas = betas_for_alpha_bar(n, alpha_transform_type=beta_schedule)
    # Betas are rounded to float32, the precision Diffusers stores them in and models were trained with: this
    # matters near beta = 1 (cosine, zero SNR), where 1 - beta keeps only a few float32 digits. Everything
    # computed from them (alpha_bar, sigmas) stays in float64.
    betas = betas.float().double()
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas).float().double()
    return betas


def vp_from_ve(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, sigma_vp)`` of variance-exploding noise levels: ``x0 + sigma eps`` scaled by
    ``alpha = 1 / sqrt(1 + sigma^2)`` is ``alpha x0 + sigma_vp eps``. Same shape and dtype as ``sigma``."""
    return (1 / (1 + sigma**2)).sqrt(), (sigma**2 / (1 + sigma**2)).sqrt()


@dataclass(frozen=True, eq=False)
class TrainedSchedule:
    """The noise levels a model was trained on, and the forward process over them: the one place that turns a
    training schedule into ``alpha_bar``, variance-exploding sigmas, SNR, noised samples and velocity targets.

    The table is built the way Diffusers builds it during training (float32 betas, float32 cumulative product),
    because those rounded values *are* the noise levels a Diffusers-trained model learned: ``1 - alpha_bar`` at
    small t keeps only a few float32 digits, and recomputing it more precisely would move the noise levels the
    model expects (by up to 1e-3 relative). Everything derived from the table is computed in float64 from these
    values, except where noted (the multistep schedulers' float32 sigmas and DDPM's float32 step, as Diffusers
    computes them).

    Attributes (all shape ``(T,)``): ``betas``, ``alphas``, ``alphas_cumprod`` (float32, as Diffusers exposes them;
    float32 also avoids silently promoting users' tensors to float64) and ``betas64``, ``alphas_cumprod64``.
    Build with :meth:`from_config`, from float64 betas (``TrainedSchedule(betas64)``) or
    :meth:`from_alphas_cumprod` (any scheduler's table, e.g. a Diffusers one).
    """

    betas64: torch.Tensor
    alphas_cumprod64: torch.Tensor | None = None
    betas: torch.Tensor = field(init=False, repr=False)
    alphas: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "betas64", self.betas64.to(torch.float64))
        betas = self.betas64.float()
        set_(self, "betas", betas)
        set_(self, "alphas", 1.0 - betas)
        if self.alphas_cumprod64 is None:
            set_(self, "alphas_cumprod", torch.cumprod(self.alphas, dim=0))
            set_(self, "alphas_cumprod64", self.alphas_cumprod.double())
        else:
            set_(self, "alphas_cumprod", self.alphas_cumprod64.float())

    @classmethod
    def from_config(cls, config) -> TrainedSchedule:
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

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Sequence[float] | torch.Tensor) -> TrainedSchedule:
        """Build from an ``alpha_bar`` table ``(T,)`` (kept as given, in float64; betas derived from it)."""
        ab = torch.as_tensor(alphas_cumprod).detach().cpu().to(torch.float64)
        if ab.ndim != 1 or ab.numel() == 0:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D table, got shape {tuple(ab.shape)}")
        betas = 1.0 - torch.cat([ab[:1], ab[1:] / ab[:-1].clamp(min=1e-300)])
        return cls(betas, ab)

    def __len__(self) -> int:
        return self.betas64.shape[0]

    def alpha_bar(self, t: int, final: float = 1.0) -> float:
        """``alpha_bar_t`` as a Python float; ``t < 0`` means "after the last step" and gives ``final``."""
        return float(self.alphas_cumprod64[t]) if t >= 0 else float(final)

    # ---- noise levels ---------------------------------------------------------------------------------------
    def floored_alphas_cumprod(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``alpha_bar`` ``(T,)`` in ``dtype`` with the zero-SNR floor: a last entry of 0 (zero terminal SNR)
        becomes ``ALPHA_BAR_FLOOR`` (as Diffusers' Euler/DPM schedulers do), so every sigma is finite."""
        ab = (self.alphas_cumprod64 if dtype == torch.float64 else self.alphas_cumprod.to(dtype)).clone()
        if ab[-1] <= 0:
            ab[-1] = ALPHA_BAR_FLOOR
        return ab

    def sigmas(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Variance-exploding noise levels ``sqrt((1 - alpha_bar) / alpha_bar)`` ``(T,)``, increasing with t,
        computed in ``dtype`` from the floored table (float32 is what Diffusers' multistep schedulers use)."""
        ab = self.floored_alphas_cumprod(dtype)
        return ((1 - ab) / ab).sqrt()

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``alpha_bar_t / (1 - alpha_bar_t)`` per sample: ``(B,)`` float32 on
        ``timesteps``' device (computed in float64; ``1 - alpha_bar`` floored at 1e-20)."""
        ab = self.alphas_cumprod64.to(timesteps.device)[timesteps]
        return (ab / (1 - ab).clamp(min=1e-20)).float()

    # ---- forward process ------------------------------------------------------------------------------------
    def coefficients(
        self, timesteps: Any, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))`` for integer ``timesteps`` (scalar or ``(B,)``): float32,
        computed in float64, on ``device`` (default: the timesteps'). ``ValueError`` names ``timesteps``."""
        t = torch.as_tensor(timesteps)
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.dtype.is_floating_point:
            if not torch.equal(t, t.round()):
                raise ValueError(f"timesteps must be integers, got {t.tolist()}")
            t = t.long()
        device = torch.device(device) if device is not None else t.device
        if device not in self._cache:  # float64 maths, stored float32 (MPS has no float64)
            ab = self.alphas_cumprod64
            self._cache[device] = (ab.sqrt().float().to(device), (1 - ab).sqrt().float().to(device))
        a, s = self._cache[device]
        t = t.to(device)
        if t.device.type == "cpu" and ((t < 0).any() or (t >= len(self)).any()):
            raise ValueError(f"timesteps must lie in [0, {len(self) - 1}], got {t.tolist()}")
        return a[t], s[t]

    def _batch_coefficients(self, timesteps: Any, like: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(like, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(like).__name__}")
        n = torch.as_tensor(timesteps).numel()
        if n not in (1, like.shape[0]):
            raise ValueError(f"timesteps has {n} entries but the batch has {like.shape[0]} samples")
        return self.coefficients(timesteps, like.device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """Forward process ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``; ``x0``, ``noise``:
        ``(B, ...)``, ``timesteps``: scalar or ``(B,)`` integers. Coefficients are cast to ``x0``'s dtype."""
        a, s = self._batch_coefficients(timesteps, x0, "x0")
        return add_noise(x0, noise, a, s)

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """The ``v_prediction`` target ``sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x0``, shaped like ``x0``."""
        a, s = self._batch_coefficients(timesteps, x0, "x0")
        return get_velocity(x0, noise, a, s)
