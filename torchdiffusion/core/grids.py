"""Timestep and noise-level grids: which training timesteps (or noise levels ``sigma``) a sampler visits, and
the one set of checks for grids a user passes in.

Timestep grids (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2):

* ``leading``   ``0, r, 2r, ...`` with integer ratio ``r = T // n``, plus ``steps_offset`` (Stable Diffusion 1.x)
* ``trailing``  counts down from ``T - 1`` in steps of ``T / n`` (starts at the last, noisiest step)
* ``linspace``  ``n`` evenly spaced points from ``0`` to ``T - 1`` (not rounded: callers decide)

Sigma grids (k-diffusion style and multistep samplers): Karras et al. 2022 eq. 5 (``rho = 7``), exponential
(log-uniform), the beta-distribution grid of Lee et al. 2024, the Align-Your-Steps grids (Sabour et al. 2024) and
``ode_tuned``; :func:`named_sigmas` gives them by name for any range. :func:`discrete_sigma_schedule` (Euler, Heun,
LMS, KDPM2), :func:`multistep_schedule` (DPM-Solver, DEIS, UniPC) and :func:`flow_match_sigmas` build the grids of
the schedulers exactly as Diffusers' classes do.

**The rule for a sigma grid** (``sigmas=`` of the schedulers and of :func:`torchdiffusion.core.sampling.sample`),
checked in one place, :func:`check_custom_sigmas`: at least 2 finite levels, all ``>= 0``, noisiest first and
*non-increasing*. Equal neighbours are allowed because Diffusers' own grids contain them (the final level repeats
the last one with ``final_sigmas_type="sigma_min"`` on UniPC/DEIS Karras grids; Heun and KDPM2 list each level
twice), so any grid a scheduler shows in ``.sigmas`` can be passed back in. A step between two equal levels does
not move the sample. User-given ``timesteps`` must be integers, strictly descending, in ``[0, T - 1]``.

Grids are NumPy float64 arrays, descending (noisiest first); callers round or cast them as their class needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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


def _check_exactly_one(num_inference_steps: Any, timesteps: Any, sigmas: Any) -> None:
    given = [k for k, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                            ("sigmas", sigmas)) if v is not None]  # fmt: skip
    if len(given) != 1:
        raise ValueError(f"pass exactly one of num_inference_steps, timesteps or sigmas; got {given or 'none'}")


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
    _check_exactly_one(num_inference_steps, timesteps, sigmas)
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


# ---- named grids and the multistep schedulers' grids --------------------------------------------------
STYLES: tuple[str, ...] = ("dpmsolver", "singlestep", "unipc", "deis")
GRIDS: tuple[str, ...] = ("karras", "exponential", "ays_sd15", "ays_sdxl", "ode_tuned")

# Align-Your-Steps grids (Sabour et al. 2024, published with the paper): 11 sigma levels for 10 steps (the last,
# 0.029, is the trained minimum; samplers end at 0 instead) and the matching 10 integer timesteps.
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)
AysSchedules: dict[str, list[float]] = {  # Diffusers' name and layout: usable as `timesteps=` / `sigmas=`
    "StableDiffusionTimesteps": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24],
    "StableDiffusionSigmas": [*AYS_SD15[:-1], 0.0],
    "StableDiffusionXLTimesteps": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13],
    "StableDiffusionXLSigmas": [*AYS_SDXL[:-1], 0.0],
    "StableDiffusionVideoSigmas": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.0],
}
# Grids tuned on the probability-flow ODE error (benchmarks/sampler_error.py --tune): positions of log(sigma) from
# log(sigma_max) (0) towards log(sigma_min) (1) for 5 and 10 steps, minimising the mean error of UniPC
# (noise prediction, 3rd order, bh2) on six Gaussian mixtures in 2, 4 and 8 dimensions under the SD schedule.
# The benchmark's own mixture was held out. Other step counts interpolate the nearest tuned grid.
ODE_TUNED = {
    5: (0.0, 0.1529, 0.3519, 0.6053, 0.6925),
    10: (0.0, 0.0895, 0.2041, 0.2859, 0.3856, 0.4699, 0.5451, 0.6583, 0.7715, 0.9479),
}


def named_sigmas(name: str, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """``n`` descending noise levels from ``sigma_max`` to ``sigma_min`` (no final 0) for a named grid.

    ``karras`` (eq. 5 of Karras et al. 2022, ``rho``), ``exponential`` (uniform in log sigma = uniform log-SNR),
    ``ays_sd15`` / ``ays_sdxl`` (Align Your Steps: ``n + 1`` levels interpolated from the published 10-step grid,
    the last replaced by the final 0, as ComfyUI does; shape stretched to the range), ``ode_tuned`` (see
    ``ODE_TUNED``; may end above ``sigma_min``). Shape ``(n,)`` float64.
    """
    n = check_num_inference_steps(n)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    if name == "karras":
        return karras_sigmas(sigma_min, sigma_max, n, rho)
    if name == "exponential":
        return exponential_sigmas(sigma_min, sigma_max, n)
    shapes = {"ays_sd15": AYS_SD15, "ays_sdxl": AYS_SDXL}
    if name in shapes:
        base = np.log(np.asarray(shapes[name]))
        pos = (base[0] - base) / (base[0] - base[-1])
        pos = np.interp(np.linspace(0, 1, n + 1), np.linspace(0, 1, len(pos)), pos)[:n]  # n steps, then 0
    elif name == "ode_tuned":
        ref = min(ODE_TUNED, key=lambda k: (abs(k - n), -k))
        pos = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, ref), ODE_TUNED[ref]) if n > 1 else np.zeros(1)
    else:
        raise ValueError(f"grid={name!r} is not supported; choose one of {', '.join(map(repr, GRIDS))}")
    return np.exp(hi + np.asarray(pos) * (lo - hi))


def _spaced_timesteps(n: int, T: int, last: int, spacing: str, steps_offset: int) -> np.ndarray:
    """Integer timesteps of the multistep schedulers: ``n + 1`` points, the lowest dropped."""
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.arange(last, 0, -T / n).round().astype(np.int64) - 1
    raise ValueError(f"timestep_spacing={spacing!r} is not supported; choose 'linspace', 'leading' or 'trailing'")


def multistep_schedule(
    train_sigmas: np.ndarray,
    config: Any,
    num_inference_steps: int | None = None,
    timesteps: Any = None,
    sigmas: Any = None,
    style: str = "dpmsolver",
    mu: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Timesteps ``(n,)`` and noise levels ``(n + 1,)`` (float64) of a multistep scheduler.

    ``train_sigmas`` ``(T,)``: VE noise levels of the training schedule, increasing with t. Exactly one of
    ``num_inference_steps``, ``timesteps`` (descending ints) or ``sigmas`` (descending noise levels, VE, with or
    the final one; for ``use_flow_sigmas`` the flow noise levels before shifting) must be given. Timesteps are
    integers, except for custom ``sigmas``: those are used exactly, at fractional timesteps (``sigma_to_t``).
    """
    T = len(train_sigmas)
    _check_exactly_one(num_inference_steps, timesteps, sigmas)
    kind = sigma_grid_kind(config)
    flow = config.get("use_flow_sigmas", False)
    tuned = config.get("use_ode_tuned_sigmas", False)
    if tuned and (kind or flow or config.get("use_lu_lambdas", False)):
        raise ValueError("use_ode_tuned_sigmas=True cannot be combined with another use_*_sigmas/use_lu_lambdas")
    log_train = np.log(train_sigmas)
    final_min = config.get("final_sigmas_type", "zero") == "sigma_min" or style == "deis"
    if sigmas is not None and not flow:  # a custom VE grid: the model is called at its fractional timesteps
        s = check_custom_sigmas(sigmas)
        return sigma_to_t(s[:-1], log_train), s
    if timesteps is not None:
        if kind is not None or tuned or config.get("use_lu_lambdas", False):
            raise ValueError("timesteps cannot be combined with use_*_sigmas/use_lu_lambdas; pass sigmas= instead")
        ts = check_custom_timesteps(timesteps, T).astype(np.float64)
        n = len(ts)
    else:
        n = check_num_inference_steps(len(sigmas) if sigmas is not None else num_inference_steps, T)
        clipped = 0
        if style in ("dpmsolver", "singlestep"):  # lambda_min_clipped cuts the noisiest, most unstable steps
            lam = -np.log(train_sigmas)
            clipped = int(np.searchsorted(lam[::-1], config.get("lambda_min_clipped", -math.inf)))
        spacing = "linspace" if style == "singlestep" else config.get("timestep_spacing", "linspace")
        ts = _spaced_timesteps(n, T, T - clipped, spacing, config.get("steps_offset", 0)).astype(np.float64)
    round_ts = style != "dpmsolver" or config.get("beta_schedule") != "squaredcos_cap_v2"
    if flow and kind == "karras" and style == "unipc" and sigmas is None:
        # Diffusers' UniPC: Karras spacing of the trained (VE) noise levels, then mapped to flow sigmas s / (1 + s)
        ve = convert_sigmas(kind, train_sigmas[::-1], n, config.get("sigma_min"), config.get("sigma_max"))
        s = ve / (ve + 1)
        ts, last = s * T, (s[-1] if final_min else 0.0)
    elif flow:
        if sigmas is not None:
            base = np.asarray(sigmas, dtype=np.float64)
        elif style == "unipc":
            base = np.linspace(1, 1 / T, n + 1)[:-1]
        else:  # Diffusers' DPM-Solver and DEIS: 1 - linspace(1, 1/T) reversed, so the grid starts at 1 - 1/T
            base = (1.0 - np.linspace(1, 1 / T, n + 1))[::-1][:-1]
        if config.get("use_dynamic_shifting", False):
            if mu is None:
                raise ValueError("use_dynamic_shifting=True needs set_timesteps(..., mu=...)")
            s = time_shift(mu, base, config.get("time_shift_type", "exponential"))
        else:
            s = flow_shift(base, config.get("flow_shift", 1.0))
        if config.get("shift_terminal"):
            s = stretch_to_terminal(s, config["shift_terminal"])
        if style == "unipc" and abs(s[0] - 1) < 1e-6:
            s[0] -= 1e-6
        ts, last = s * T, (s[-1] if final_min else 0.0)
    elif tuned:  # fractional timesteps: the model is told exactly the noise level the solver uses
        s = named_sigmas("ode_tuned", n, float(train_sigmas[0]), float(train_sigmas[-1]))
        last = (s[-1] if style in ("unipc", "deis") else train_sigmas[0]) if final_min else 0.0
        return sigma_to_t(s, log_train), np.append(s, last)
    elif kind is not None or config.get("use_lu_lambdas", False):
        if kind is None:  # use_lu_lambdas: uniform in lambda = -log sigma between the table's ends
            s = np.exp(np.linspace(float(log_train[-1]), float(log_train[0]), n))
        else:
            s = convert_sigmas(kind, train_sigmas[::-1], n, config.get("sigma_min"), config.get("sigma_max"))
        last = (s[-1] if style in ("unipc", "deis") else train_sigmas[0]) if final_min else 0.0
        ts = frac = sigma_to_t(s, log_train)
        if kind in ("karras", None) and round_ts:  # Diffusers rounds karras and lu grids only
            ts = ts.round()
        if n > 1 and np.trunc(ts[0]) == np.trunc(ts[1]) and len(np.unique(frac)) == n:
            # The first integer timestep would repeat (Karras-type grids on the cosine schedule put several noise
            # levels in its last training step; Diffusers then skips a step and runs off the end of its tables):
            # keep the timesteps fractional, so the model is told the noise level the solver uses.
            return frac, np.append(s, last)
    else:
        s = np.interp(ts, np.arange(T), train_sigmas)
        last = train_sigmas[0] if final_min else 0.0
    return np.trunc(ts), np.append(s, last)  # Diffusers casts fractional timesteps to int64 (truncation)
