"""Sampling grids of the multistep schedulers (DPM-Solver, UniPC, DEIS) and named noise-level schedules.

The multistep schedulers visit ``n`` integer training timesteps and keep ``n + 1`` variance-exploding noise levels
``sigma`` (the last is where sampling ends: 0, or the smallest training sigma). :func:`multistep_schedule` builds
them exactly as Diffusers' classes do; the ``style`` argument carries the few places where those classes differ.

:func:`named_sigmas` gives grids by name for any range ``[sigma_min, sigma_max]``, including the Align-Your-Steps
grids (Sabour et al. 2024) re-sampled to any length by log-linear interpolation (their sec. 3.3) and ``"ays_ode"``,
a grid tuned on the probability-flow ODE error of a Gaussian-mixture stand-in (see ``benchmarks/sampler_error.py``).
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

# Align-Your-Steps sigma grids for 10 steps + final 0 (Sabour et al. 2024, published with the paper).
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)
# Positions in [0, 1] of log(sigma) between log(sigma_max) and log(sigma_min) of a 10-step grid tuned with
# benchmarks/sampler_error.py (Gaussian mixture, multistep 3rd-order UniPC); see named_sigmas("ays_ode").
ODE_TUNED = (0.0, 0.2375, 0.3922, 0.5062, 0.6006, 0.6842, 0.7607, 0.8323, 0.8998, 0.9565, 1.0)


def loglinear_resample(sigmas: np.ndarray, n: int) -> np.ndarray:
    """Re-sample a descending grid to ``n`` points: interpolate ``log sigma`` linearly in the grid position."""
    xs = np.linspace(0, 1, len(sigmas))
    return np.exp(np.interp(np.linspace(0, 1, n), xs, np.log(np.asarray(sigmas, dtype=np.float64))))


def named_sigmas(name: str, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """``n`` descending noise levels from ``sigma_max`` to ``sigma_min`` (no final 0) for a named grid.

    ``karras`` (eq. 5 of Karras et al. 2022, ``rho``), ``exponential`` (uniform in log sigma = uniform log-SNR),
    ``ays_sd15`` / ``ays_sdxl`` (Align Your Steps, their shape stretched to the range), ``ays_ode`` (tuned on the
    ODE error, see module docstring). Shape ``(n,)`` float64.
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
    elif name == "ays_ode":
        pos = np.asarray(ODE_TUNED)
    else:
        raise ValueError(
            f"grid={name!r} is not supported; choose one of 'karras', 'exponential', 'ays_sd15', 'ays_sdxl', 'ays_ode'"
        )
    if n == 1:
        return np.array([sigma_max])
    return np.exp(hi + np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(pos)), pos) * (lo - hi))


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
    log_train = np.log(train_sigmas)
    final_min = config.get("final_sigmas_type", "zero") == "sigma_min" or style == "deis"
    if sigmas is not None and not flow:  # a custom VE grid: the model is called at its fractional timesteps
        s = check_custom_sigmas(sigmas)
        return sigma_to_t(s[:-1], log_train), s
    if timesteps is not None:
        if kind is not None or config.get("use_lu_lambdas", False):
            raise ValueError(f"timesteps cannot be combined with use_{kind or 'lu_lambdas'}; pass sigmas= instead")
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
    elif kind is not None or config.get("use_lu_lambdas", False):
        if kind is None:  # use_lu_lambdas: uniform in lambda = -log sigma between the table's ends
            s = np.exp(np.linspace(float(log_train[-1]), float(log_train[0]), n))
        else:
            s = convert_sigmas(kind, train_sigmas[::-1], n, config.get("sigma_min"), config.get("sigma_max"))
        ts = sigma_to_t(s, log_train)
        if kind in ("karras", None) and round_ts:  # Diffusers rounds karras and lu grids only
            ts = ts.round()
        last = (s[-1] if style in ("unipc", "deis") else train_sigmas[0]) if final_min else 0.0
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
