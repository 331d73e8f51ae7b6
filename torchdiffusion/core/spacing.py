"""Inference grids: which training timesteps (or noise levels ``sigma``) a sampler visits.

Timestep grids (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2):

* ``leading``   ``0, r, 2r, ...`` with integer ratio ``r = T // n``, plus ``steps_offset`` (Stable Diffusion 1.x)
* ``trailing``  counts down from ``T - 1`` in steps of ``T / n`` (starts at the last, noisiest step)
* ``linspace``  ``n`` evenly spaced points from ``0`` to ``T - 1`` (not rounded: callers decide)

Sigma grids (for the k-diffusion style samplers): Karras et al. 2022 eq. 5 (``rho = 7``), exponential
(log-uniform) and the beta-distribution grid of Lee et al. 2024.

Grids are NumPy float64 arrays, descending (noisiest first); callers round or cast them as their class needs.
All validation lives here so every scheduler rejects bad input with the same clear errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

TIMESTEP_SPACINGS: tuple[str, ...] = ("linspace", "leading", "trailing")


def check_num_inference_steps(num_inference_steps: object, num_train_timesteps: int | None = None) -> int:
    """Return ``num_inference_steps`` as an int, or raise naming it (must be an int in ``1..num_train_timesteps``)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        if isinstance(num_inference_steps, torch.Tensor) and num_inference_steps.numel() == 1:
            if not num_inference_steps.dtype.is_floating_point:
                return check_num_inference_steps(int(num_inference_steps), num_train_timesteps)
        raise TypeError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    n = int(num_inference_steps)
    if n < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {n}")
    if num_train_timesteps is not None and n > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={n} is larger than num_train_timesteps={num_train_timesteps}: the model was "
            f"trained on {num_train_timesteps} noise levels, so use at most that many steps"
        )
    return n


def timestep_grid(
    num_inference_steps: int, num_train_timesteps: int, spacing: str = "leading", steps_offset: int = 0
) -> np.ndarray:
    """Descending float64 timesteps, shape ``(num_inference_steps,)``; ``linspace`` values are not rounded.

    ``steps_offset`` is added for ``leading`` spacing only (as in Diffusers).
    """
    n = check_num_inference_steps(num_inference_steps, num_train_timesteps)
    T = int(num_train_timesteps)
    if spacing == "linspace":
        return np.linspace(0, T - 1, n)[::-1].copy()
    if spacing == "leading":
        ratio = T // n
        return (np.arange(0, n) * ratio).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)) - 1.0
    raise ValueError(
        f"timestep_spacing={spacing!r} is not supported; choose one of {', '.join(map(repr, TIMESTEP_SPACINGS))}"
    )


def check_custom_timesteps(
    timesteps: Sequence[int] | np.ndarray | torch.Tensor, num_train_timesteps: int
) -> np.ndarray:
    """Validate user-given ``timesteps``: non-empty, integers, strictly descending, in ``[0, num_train_timesteps)``.

    Returns them as an int64 array.
    """
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.detach().cpu().numpy()
    arr = np.asarray(timesteps)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D list of ints, got {timesteps!r}")
    if not (
        np.issubdtype(arr.dtype, np.integer) or (np.issubdtype(arr.dtype, np.floating) and (arr == arr.round()).all())
    ):
        raise ValueError(f"timesteps must hold integers, got {arr.tolist()!r}")
    arr = arr.astype(np.int64)
    if (np.diff(arr) >= 0).any():
        raise ValueError(f"timesteps must be strictly descending, got {arr.tolist()!r}")
    if arr[0] >= num_train_timesteps or arr[-1] < 0:
        raise ValueError(
            f"timesteps must lie in [0, {num_train_timesteps - 1}] (num_train_timesteps), got {arr.tolist()!r}"
        )
    return arr


def check_custom_sigmas(sigmas: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate user-given ``sigmas``: at least 2 finite values >= 0, non-increasing. Returns float64."""
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.detach().cpu().double().numpy()
    arr = np.asarray(sigmas, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(
            f"sigmas must be a 1-D list of at least 2 noise levels (the last is usually 0), got {sigmas!r}"
        )
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"sigmas must be finite and >= 0, got {arr.tolist()!r}")
    if (np.diff(arr) > 0).any():
        raise ValueError(f"sigmas must be non-increasing (noisiest first), got {arr.tolist()!r}")
    return arr


# ---- sigma grids ---------------------------------------------------------------------------------------------
def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 eq. 5: ``(s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, shape ``(n,)``."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Log-uniform noise levels from ``sigma_max`` down to ``sigma_min``, shape ``(n,)``."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Noise levels at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024), shape ``(n,)``."""
    try:
        from scipy.stats import beta as beta_dist
    except ImportError as e:  # pragma: no cover - scipy ships with scikit-learn
        raise ImportError("use_beta_sigmas=True needs scipy: pip install scipy") from e
    ppf = beta_dist.ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return sigma_min + ppf * (sigma_max - sigma_min)


SIGMA_GRIDS = {"karras": karras_sigmas, "exponential": exponential_sigmas, "beta": beta_sigmas}


def sigma_grid_kind(config) -> str | None:
    """Which of ``use_karras_sigmas`` / ``use_exponential_sigmas`` / ``use_beta_sigmas`` a config turns on.

    Raises ``ValueError`` naming them when more than one is set. Returns ``"karras"``, ``"exponential"``,
    ``"beta"`` or ``None``.
    """
    on = [k for k in SIGMA_GRIDS if config.get(f"use_{k}_sigmas", False)]
    if len(on) > 1:
        names = ", ".join(f"use_{k}_sigmas" for k in on)
        raise ValueError(
            f"only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be True; got {names}"
        )
    return on[0] if on else None


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each noise level: linear interpolation in ``log sigma``.

    ``log_sigmas`` (shape ``(T,)``, increasing with t) are the log noise levels of the training schedule.
    Values outside the trained range are clamped to ``[0, T - 1]``.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    lo_v, hi_v = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo_v - log_sigma) / (lo_v - hi_v), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)
