"""A stateless sampling API in the k-diffusion style: ``sample(denoiser, x, sigmas, solver)``.

The sample is in variance-exploding form ``x = x0 + sigma eps`` (start with ``noise * sigmas[0]``) and
``denoiser(x, sigma) -> x0`` is the model's clean-sample estimate, with ``sigma`` a ``(B,)`` tensor. Every call
keeps its own history, so one denoiser can serve any number of concurrent runs. The update rules are the ones the
schedulers use (:mod:`torchdiffusion.core.solvers`, :mod:`torchdiffusion.core.exponential_integrators`), with
``alpha = 1``. ``sigmas`` follow the one rule of :mod:`torchdiffusion.core.grids` (non-increasing, >= 0): a step
between two equal levels calls no model and leaves the sample as it is.

Solvers (A1111 / ComfyUI names in brackets): ``euler`` [Euler], ``euler_ancestral`` [Euler a], ``heun`` [Heun],
``dpm_2`` [DPM2], ``lms`` [LMS], ``ddim`` [DDIM], ``dpmpp_2m`` [DPM++ 2M], ``dpmpp_2m_sde`` [DPM++ 2M SDE],
``dpmpp_3m`` / ``dpmpp_3m_sde`` [DPM++ 3M (SDE)], ``deis`` [DEIS], ``unipc`` [UniPC].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..utils.torch_utils import randn_tensor
from . import exponential_integrators as M
from . import prediction as P
from . import solvers as S
from .grids import check_custom_sigmas, named_sigmas, sigma_to_t
from .schedules import TrainedSchedule, vp_from_ve

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


class VPDenoiser:
    """Wrap a variance-preserving model ``model(x_t, t) -> output`` (a UNet trained on ``alphas_cumprod``) as a
    k-diffusion denoiser ``D(x, sigma) -> x0`` over the variance-exploding sample ``x = x_t / alpha``.

    The model is called at the fractional training timestep of each ``sigma`` (``sigma_to_t``), with
    ``x_t = x / sqrt(1 + sigma^2)``. ``sigma_min``/``sigma_max``: the trained range, for :func:`get_sigmas`
    (from :meth:`TrainedSchedule.sigmas <torchdiffusion.core.schedules.TrainedSchedule.sigmas>`, so a
    zero-terminal-SNR table gets the same finite largest sigma as the schedulers).
    """

    def __init__(self, model: Callable, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> None:
        if prediction_type not in P.PREDICTION_TYPES:
            raise ValueError(f"prediction_type={prediction_type!r} is not supported; choose {P.PREDICTION_TYPES}")
        self.model, self.prediction_type = model, prediction_type
        self.sigmas = TrainedSchedule.from_alphas_cumprod(alphas_cumprod).sigmas().numpy()
        self.log_sigmas = np.log(self.sigmas)
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        t = torch.from_numpy(sigma_to_t(s.cpu().numpy(), self.log_sigmas)).to(device=x.device, dtype=torch.float32)
        alpha, sigma_vp = (P.expand_as(c, x) for c in vp_from_ve(s))
        out = self.model(x * alpha, t[0] if bool((s == s[0]).all()) else t)  # one timestep for the batch if it can
        x0, _ = P.to_x0_eps(out, x * alpha, alpha, sigma_vp, self.prediction_type)
        return x0


def _check(denoiser, x, sigmas, solver) -> list[float]:
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(x, sigma) -> x0, got {type(denoiser).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not supported; choose one of {', '.join(SOLVERS)}")
    return check_custom_sigmas(sigmas).tolist()


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    solver: str = "dpmpp_2m",
    *,
    order: int | None = None,
    solver_type: str | None = None,
    predict_x0: bool = True,
    eta: float = 1.0,
    s_noise: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Integrate from ``sigmas[0]`` to ``sigmas[-1]`` (usually 0) with ``solver``; returns the final sample.

    ``x``: ``(B, ...)`` at noise level ``sigmas[0]``. ``order``: of the multistep solvers (default: the solver's;
    ``lms`` 4, ``unipc`` 2). ``solver_type``: ``"midpoint"``/``"heun"`` for ``dpmpp_2m*``, ``"bh1"``/``"bh2"`` for
    ``unipc``. ``predict_x0=False``: UniPC on the noise estimate (more accurate in ``benchmarks/sampler_error.py``).
    ``eta``/``s_noise``: noise of the ancestral and SDE solvers, drawn from ``generator`` (one per sample allowed).
    ``callback`` gets ``{"i", "x", "sigma", "denoised"}`` after each model call.
    """
    sig = _check(denoiser, x, sigmas, solver)
    if order is not None and (isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4):
        raise ValueError(f"order must be an int in 1..4, got {order!r}")
    if solver_type not in (None, "midpoint", "heun", "bh1", "bh2"):
        raise ValueError(f"solver_type={solver_type!r} is not supported; choose 'midpoint', 'heun', 'bh1' or 'bh2'")
    if not eta >= 0 or not s_noise >= 0:
        raise ValueError(f"eta and s_noise must be >= 0, got eta={eta!r}, s_noise={s_noise!r}")

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
    visited = [sig[0]]  # the distinct levels so far and the next one (LMS interpolates over them)
    for i in range(n):
        s, s_next = sig[i], sig[i + 1]
        if s_next == s:  # a repeated level: nothing to integrate
            continue
        visited.append(s_next)
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
            c = S.lms_coefficients(visited, len(visited) - 2, k)
            x = x + sum(cj * dj for cj, dj in zip(c, derivs[:k]))
        else:
            lvl, target = (1.0, s), (1.0, s_next)
            if solver == "unipc":
                k, form, variant = order or 2, "data" if predict_x0 else "noise", solver_type or "bh2"
                out = x0 if predict_x0 else (x - x0) / s
                if last_x is not None:  # UniC: correct the previous prediction with the new output
                    corr = M.unipc_step(levels, lvl, min(k, len(levels)), form, variant, corrector=True)
                    x = corr.apply(last_x, [out] + outs[: len(corr.m) - 1]).to(x.dtype)
                outs.insert(0, out)
                levels.insert(0, lvl)
                last_x = x
                kk = 1 if s_next == 0 else min(k, len(outs), n - i)
                x = M.unipc_step(levels, target, kk, form, variant).apply(x, outs[:kk]).to(x.dtype)
            else:
                default, form, sde, variant = _MULTISTEP[solver]
                variant = "exact" if solver_type == "heun" else variant
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
