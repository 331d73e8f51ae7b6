"""A stateless sampling API in the k-diffusion style: ``sample(denoiser, x, sigmas, solver)``.

The sample is in variance-exploding form ``x = x0 + sigma eps`` (start with ``noise * sigmas[0]``) and
``denoiser(x, sigma) -> x0`` is the model's clean-sample estimate, with ``sigma`` a ``(B,)`` tensor. Every call
keeps its own history, so one denoiser can serve any number of concurrent runs. The update rules are the ones the
schedulers use (:mod:`torchdiffusion.core.solvers`, :mod:`torchdiffusion.core.multistep`), with ``alpha = 1``.

Solvers (A1111 / ComfyUI names in brackets): ``euler`` [Euler], ``euler_ancestral`` [Euler a], ``heun`` [Heun],
``dpm_2`` [DPM2], ``lms`` [LMS], ``ddim`` [DDIM], ``dpmpp_2m`` [DPM++ 2M], ``dpmpp_2m_sde`` [DPM++ 2M SDE],
``dpmpp_3m`` / ``dpmpp_3m_sde`` [DPM++ 3M (SDE)], ``deis`` [DEIS], ``unipc`` [UniPC].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import multistep as M
from . import solvers as S
from .grids import named_sigmas

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SOLVERS: tuple[str, ...] = (
    "euler", "euler_ancestral", "heun", "dpm_2", "lms", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m",
    "dpmpp_3m_sde", "deis", "unipc",
)  # fmt: skip
_MULTISTEP = {  # solver -> (default order, form, sde, variant)
    "ddim": (1, "data", False, "exact"),
    "dpmpp_2m": (2, "data", False, "midpoint"),
    "dpmpp_2m_sde": (2, "data", True, "midpoint"),
    "dpmpp_3m": (3, "data", False, "dpmsolver_3m"),
    "dpmpp_3m_sde": (3, "data", True, "dpmsolver_3m"),
    "deis": (3, "noise", False, "exact"),
}


def get_sigmas(grid: str, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """``n`` noise levels of a named grid (see :func:`torchdiffusion.core.grids.named_sigmas`) plus the final 0."""
    return torch.from_numpy(np.append(named_sigmas(grid, n, sigma_min, sigma_max, rho), 0.0))


def _check(denoiser, x, sigmas, solver) -> list[float]:
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(x, sigma) -> x0, got {type(denoiser).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not supported; choose one of {', '.join(SOLVERS)}")
    sig = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if len(sig) < 2 or any(not math.isfinite(s) or s < 0 for s in sig) or any(b >= a for a, b in zip(sig, sig[1:])):
        raise ValueError(f"sigmas must hold >= 2 finite levels, strictly decreasing, >= 0; got {sig}")
    return sig


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    solver: str = "dpmpp_2m",
    *,
    order: int | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Integrate from ``sigmas[0]`` to ``sigmas[-1]`` (usually 0) with ``solver``; returns the final sample.

    ``x``: ``(B, ...)`` at noise level ``sigmas[0]``. ``order``: for the multistep solvers (default: the solver's).
    ``eta``/``s_noise``: noise of the ancestral and SDE solvers, drawn from ``generator`` (one per sample allowed).
    ``callback`` gets ``{"i", "x", "sigma", "denoised"}`` after each model call.
    """
    sig = _check(denoiser, x, sigmas, solver)
    from ..utils.torch_utils import randn_tensor

    def model(z: torch.Tensor, s: float, i: int) -> torch.Tensor:
        d = denoiser(z, torch.full((z.shape[0],), s, dtype=z.dtype, device=z.device))
        if callback is not None:
            callback({"i": i, "x": z, "sigma": s, "denoised": d})
        return d

    def noise() -> torch.Tensor:
        return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype) * s_noise

    n = len(sig) - 1
    outs: list[torch.Tensor] = []  # model outputs (x0, or eps for the noise form), newest first
    levels: list[M.Level] = []
    derivs: list[torch.Tensor] = []  # d = (x - x0) / sigma at the points the model was called, newest first
    last_x = None  # UniPC: the sample before the predictor moved it
    for i in range(n):
        s, s_next = sig[i], sig[i + 1]
        x0 = model(x, s, i)
        derivs.insert(0, S.to_d(x, x0, s))
        if solver in ("euler", "euler_ancestral"):
            down, up = S.ancestral_sigmas(s, s_next, eta) if solver == "euler_ancestral" else (s_next, 0.0)
            x = S.euler_step(x, x0, s, down)
            x = x + noise() * up if up > 0 else x
        elif solver in ("heun", "dpm_2"):
            x = _two_stage(solver, model, x, x0, s, s_next, i)
        elif solver == "lms":
            k = min(order or 4, len(derivs))
            c = S.lms_coefficients(sig, i, k)
            x = x + sum(cj * dj for cj, dj in zip(c, derivs[:k]))
        else:
            lvl, target = (1.0, s), (1.0, s_next)
            if solver == "unipc":
                k = order or 2
                if last_x is not None:  # UniC: correct the previous prediction with the new output
                    corr = M.unipc_step(levels, lvl, min(k, len(levels)), "data", "bh2", corrector=True)
                    x = corr.apply(last_x, [x0] + outs[: len(corr.m) - 1]).to(x.dtype)
                outs.insert(0, x0)
                levels.insert(0, lvl)
                last_x = x
                kk = 1 if s_next == 0 else min(k, len(outs), n - i)
                x = M.unipc_step(levels, target, kk, "data", "bh2").apply(x, outs[:kk]).to(x.dtype)
            else:
                default, form, sde, variant = _MULTISTEP[solver]
                out = x0 if form == "data" else (x - x0) / s
                outs.insert(0, out)
                levels.insert(0, lvl)
                kk = 1 if s_next == 0 else min(order or default, len(outs))
                step = M.multistep(levels, target, kk, form, sde and s_next > 0, variant)
                x = step.apply(x, outs[:kk], noise() if step.noise else None).to(x.dtype)
        del outs[4:], levels[4:], derivs[4:]
    return x


def _two_stage(solver: str, model, x, x0, s: float, s_next: float, i: int) -> torch.Tensor:
    """Heun (Karras et al. 2022, Algorithm 1) or DPM-Solver-2 (k-diffusion's midpoint in log sigma); Euler to 0."""
    d = S.to_d(x, x0, s)
    if s_next == 0:
        return x + d * (s_next - s)
    if solver == "heun":
        x_e = x + d * (s_next - s)
        d2 = S.to_d(x_e, model(x_e, s_next, i), s_next)
        return x + (d + d2) / 2 * (s_next - s)
    s_mid = math.exp((math.log(s) + math.log(s_next)) / 2)
    x_mid = x + d * (s_mid - s)
    return x + S.to_d(x_mid, model(x_mid, s_mid, i), s_mid) * (s_next - s)
