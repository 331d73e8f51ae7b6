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


def convert_sigmas(
    kind: str, sigmas: np.ndarray, n: int, sigma_min: float | None = None, sigma_max: float | None = None
):
    """Re-space a descending sigma grid with the ``kind`` grid (``karras``/``exponential``/``beta``) between
    ``sigma_min``/``sigma_max`` (default: the grid's own ends). Returns ``(n,)`` float64."""
    lo = float(sigmas[-1]) if sigma_min is None else float(sigma_min)
    hi = float(sigmas[0]) if sigma_max is None else float(sigma_max)
    return SIGMA_GRIDS[kind](lo, hi, n)


def discrete_sigma_schedule(
    train_sigmas: np.ndarray,
    config,
    num_inference_steps: int | None = None,
    timesteps=None,
    sigmas=None,
    round_karras_timesteps: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Timesteps ``(n,)`` and noise levels ``(n + 1,)`` (the last is the final level) for k-diffusion style samplers
    over a discrete training schedule whose noise levels ``train_sigmas`` ``(T,)`` increase with t.

    Exactly one of ``num_inference_steps`` (grid by ``config.timestep_spacing``, re-spaced when a
    ``use_*_sigmas`` flag is set), ``timesteps`` (descending, in ``[0, T-1]``, may be fractional) or ``sigmas``
    (descending noise levels including the final one) must be given. Config keys read: ``timestep_spacing``,
    ``steps_offset``, ``use_{karras,exponential,beta}_sigmas``, ``sigma_min``, ``sigma_max``,
    ``interpolation_type``, ``final_sigmas_type``.
    """
    T = len(train_sigmas)
    given = [
        name
        for name, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps), ("sigmas", sigmas))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(f"pass exactly one of num_inference_steps, timesteps or sigmas; got {given or 'none'}")
    kind = sigma_grid_kind(config)
    log_train = np.log(train_sigmas)
    if sigmas is not None:
        s = check_custom_sigmas(sigmas)
        return sigma_to_t(s[:-1], log_train), s
    if timesteps is not None:
        if kind is not None:
            raise ValueError(f"timesteps cannot be combined with use_{kind}_sigmas=True; pass sigmas= instead")
        ts = np.asarray(timesteps.cpu() if isinstance(timesteps, torch.Tensor) else timesteps, dtype=np.float64)
        if ts.ndim != 1 or ts.size == 0 or (np.diff(ts) >= 0).any() or ts[0] > T - 1 or ts[-1] < 0:
            raise ValueError(
                f"timesteps must be a non-empty, strictly descending list in [0, {T - 1}], got {ts.tolist()}"
            )
        n = len(ts)
    else:
        n = check_num_inference_steps(num_inference_steps, T)
        ts = timestep_grid(n, T, config.get("timestep_spacing", "linspace"), config.get("steps_offset", 0))
        ts = ts.astype(np.float32).astype(np.float64)
    s = np.interp(ts, np.arange(T), train_sigmas)
    if config.get("interpolation_type", "linear") == "log_linear":
        s = np.exp(np.linspace(log_train[-1], log_train[0], n + 1))
    if kind is not None and timesteps is None:
        s = convert_sigmas(kind, s, n, config.get("sigma_min"), config.get("sigma_max"))
        ts = sigma_to_t(s, log_train)
        if round_karras_timesteps and kind == "karras":
            ts = ts.round()
    final = train_sigmas[0] if config.get("final_sigmas_type", "zero") == "sigma_min" else 0.0
    return ts, np.concatenate([s, [final]])


# ---- flow matching (Esser et al. 2024) ---------------------------------------------------------------------------
def flow_shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Resolution shift of SD3 (eq. 23): ``shift s / (1 + (shift - 1) s)``; ``shift = 1`` is the identity."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(mu: float, sigmas: np.ndarray, kind: str = "exponential", power: float = 1.0) -> np.ndarray:
    """Dynamic shift by ``mu`` (Flux): ``e^mu / (e^mu + (1/s - 1)^power)`` or, ``linear``, ``mu / (mu + ...)``."""
    base = math.exp(mu) if kind == "exponential" else mu
    return base / (base + (1 / sigmas - 1) ** power)


def stretch_to_terminal(sigmas: np.ndarray, shift_terminal: float) -> np.ndarray:
    """Rescale ``1 - s`` so the last noise level becomes exactly ``shift_terminal``."""
    one_minus = 1 - sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """``mu`` for dynamic shifting: linear in the number of image tokens between (base, base_shift) and
    (max, max_shift), as Flux/SD3 pipelines compute it."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def distilled_timesteps(num_train_timesteps: int, original_steps: int | None, strength: float = 1.0) -> np.ndarray:
    """Ascending timesteps a consistency model was distilled on: every ``T // original_steps``-th step ending
    at ``k - 1`` (LCM), or every step when ``original_steps`` is None (TCD); the first ``strength`` share of them."""
    if original_steps is None:
        return np.arange(0, int(num_train_timesteps * strength))
    k = num_train_timesteps // original_steps
    return np.arange(1, int(original_steps * strength) + 1) * k - 1


def subsample_descending(origin: np.ndarray, n: int) -> np.ndarray:
    """``n`` roughly evenly spaced entries of ``origin`` (ascending), returned noisiest first."""
    rev = origin[::-1].copy()
    return rev[np.floor(np.linspace(0, len(rev), num=n, endpoint=False)).astype(np.int64)]


def flow_match_sigmas(
    config, num_inference_steps=None, sigmas=None, timesteps=None, mu=None, shift=1.0, sigma_range=(0.001, 1.0)
) -> np.ndarray:
    """Flow-matching noise levels ``(n,)`` in (0, 1], noisiest first (no final level), as Diffusers builds them:
    an even grid over ``sigma_range`` (or custom ``sigmas`` / ``timesteps / T``), then the static ``shift`` or the
    dynamic shift by ``mu``, ``shift_terminal`` stretching and an optional Karras/exponential/beta re-spacing.
    """
    T = config.num_train_timesteps
    custom = [np.asarray(v, dtype=np.float64) for v in (sigmas, timesteps) if v is not None]
    if num_inference_steps is None and not custom:
        raise ValueError("pass num_inference_steps, sigmas or timesteps")
    n = check_num_inference_steps(num_inference_steps if num_inference_steps is not None else len(custom[0]))
    if any(c.ndim != 1 or len(c) != n for c in custom):
        raise ValueError(f"sigmas and timesteps must be 1-D with num_inference_steps={n} entries")
    if sigmas is not None:
        s = custom[0]
        if not np.isfinite(s).all() or (s <= 0).any() or (s > 1).any():
            raise ValueError(f"sigmas must lie in (0, 1] for flow matching, got {s.tolist()}")
    elif timesteps is not None:
        s = custom[0] / T
    else:
        lo, hi = sigma_range
        s = np.linspace(hi * T, lo * T, n) / T
    s = time_shift(mu, s, config.time_shift_type) if config.use_dynamic_shifting else flow_shift(s, shift)
    if config.shift_terminal:
        s = stretch_to_terminal(s, config.shift_terminal)
    kind = sigma_grid_kind(config)
    return s if kind is None else convert_sigmas(kind, s, n)
