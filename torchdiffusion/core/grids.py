"""Sampling grids of the multistep schedulers (DPM-Solver, UniPC, DEIS) and named noise-level schedules.

The multistep schedulers visit ``n`` integer training timesteps and keep ``n + 1`` variance-exploding noise levels
``sigma`` (the last is where sampling ends: 0, or the smallest training sigma). :func:`multistep_schedule` builds
them exactly as Diffusers' classes do; the ``style`` argument carries the few places where those classes differ.

:func:`named_sigmas` gives grids by name for any range ``[sigma_min, sigma_max]``, including the Align-Your-Steps
grids (Sabour et al. 2024) re-sampled to any length by log-linear interpolation (their sec. 3.3) and ``"ode_tuned"``,
grids tuned on the probability-flow ODE error of Gaussian-mixture stand-ins (see ``benchmarks/sampler_error.py``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .spacing import (
    check_custom_sigmas,
    check_num_inference_steps,
    convert_sigmas,
    exponential_sigmas,
    flow_shift,
    karras_sigmas,
    sigma_grid_kind,
    sigma_to_t,
    stretch_to_terminal,
    time_shift,
)

STYLES: tuple[str, ...] = ("dpmsolver", "singlestep", "unipc", "deis")
GRIDS: tuple[str, ...] = ("karras", "exponential", "ays_sd15", "ays_sdxl", "ode_tuned")

# Align-Your-Steps sigma grids for 10 steps + final 0 (Sabour et al. 2024, published with the paper).
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)
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
    given = [k for k, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                            ("sigmas", sigmas)) if v is not None]  # fmt: skip
    if len(given) != 1:
        raise ValueError(f"pass exactly one of num_inference_steps, timesteps or sigmas; got {given or 'none'}")
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
        ts = _check_int_timesteps(timesteps, T).astype(np.float64)
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
    if flow:
        base = np.asarray(sigmas, dtype=np.float64) if sigmas is not None else np.linspace(1, 1 / T, n + 1)[:-1]
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


def _check_int_timesteps(timesteps: Any, T: int) -> np.ndarray:
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.detach().cpu().numpy()
    ts = np.asarray(timesteps)
    if ts.ndim != 1 or ts.size == 0 or not np.all(np.asarray(ts, dtype=np.float64) % 1 == 0):
        raise ValueError(f"timesteps must be a non-empty 1-D list of integers, got {timesteps!r}")
    ts = ts.astype(np.int64)
    if (np.diff(ts) >= 0).any() or ts[0] > T - 1 or ts[-1] < 0:
        raise ValueError(f"timesteps must be strictly descending and lie in [0, {T - 1}], got {ts.tolist()}")
    return ts
