"""Exponential-integrator solvers: DPM-Solver / DPM-Solver++ (and their SDE forms), DEIS and UniPC.

Setting (Lu et al. 2022, "DPM-Solver", sec. 3): a noisy sample is ``x = alpha x0 + sigma eps`` and
``lambda = log(alpha / sigma)`` is half the log signal-to-noise ratio; it grows as noise is removed. In ``lambda``
the linear part of the probability-flow ODE integrates exactly. With ``h = lambda_t - lambda_s`` and ``u`` the
distance in ``lambda`` from ``s``:

* data form  (``D`` = the model's x0 estimate, DPM-Solver++ eq. 9)::

      x_t = (sigma_t / sigma_s) x_s + alpha_t int_0^h e^{-(h-u)} D(u) du

* noise form (``E`` = the model's eps estimate, DPM-Solver eq. 3.4; DEIS)::

      x_t = (alpha_t / alpha_s) x_s - K int_0^h e^{-u} E(u) du,     K = sigma_t e^h = alpha_t sigma_s / alpha_s

* the SDE forms (DPM-Solver++ sec. 5, "SDE-DPM-Solver"): the model term has twice the weight, data form with
  ``e^{-2(h-u)}`` and ``x_s`` scaled by ``e^{-h}``, plus fresh noise ``sigma_t sqrt(1 - e^{-2h}) z``
  (data) or ``sigma_t sqrt(e^{2h} - 1) z`` (noise).

A solver replaces ``D`` (or ``E``) on ``[0, h]`` by a polynomial in ``u / h`` through earlier model outputs and
integrates it exactly. Every update is therefore *linear* in the sample and the outputs: the functions here return
a :class:`LinearStep` of float64 coefficients computed from the noise levels, and :meth:`LinearStep.apply` does
the tensor arithmetic once. No state is kept here; schedulers and :mod:`torchdiffusion.core.sampling` hold the
history. Noise levels are given as ``(alpha, sigma)`` pairs of Python floats (see :func:`alpha_sigma`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

Level = tuple[float, float]
"""A noise level as ``(alpha, sigma)``: ``x = alpha x0 + sigma eps``."""

FORMS: tuple[str, ...] = ("data", "noise")
VARIANTS: tuple[str, ...] = ("exact", "midpoint", "dpmsolver_3m")
UNIPC_VARIANTS: tuple[str, ...] = ("bh1", "bh2")


@dataclass(frozen=True)
class LinearStep:
    """``x_next = x * sample + sum_j m[j] * outputs[j] + noise * z``; ``outputs`` in the order the step was built."""

    x: float
    m: tuple[float, ...]
    noise: float = 0.0

    def apply(
        self, sample: torch.Tensor, outputs: Sequence[torch.Tensor], noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Combine tensors of shape ``(B, ...)``; computed in float32 (float64 kept) and returned in that dtype."""
        if len(outputs) != len(self.m):
            raise ValueError(f"this step combines {len(self.m)} model outputs, got {len(outputs)}")
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        out = sample.to(dtype) * self.x
        for c, m in zip(self.m, outputs):
            if c != 0.0:
                out = out + c * m.to(dtype)
        if self.noise != 0.0:
            if noise is None:
                raise ValueError("this stochastic step needs noise (a tensor shaped like the sample)")
            out = out + self.noise * noise.to(device=out.device, dtype=dtype)
        return out


# ---- noise levels ----------------------------------------------------------------------------------------------
def alpha_sigma(sigma: float, flow: bool = False) -> Level:
    """``(alpha, sigma)`` of a grid value: variance exploding ``sigma`` -> VP ``(1, sigma) / sqrt(1 + sigma^2)``;
    for flow matching (``flow=True``) the grid value ``s`` means ``x = (1 - s) x0 + s eps``."""
    sigma = float(sigma)
    if flow:
        return 1.0 - sigma, sigma
    alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return alpha, sigma * alpha


def half_log_snr(level: Level) -> float:
    """``lambda = log(alpha / sigma)``; ``+inf`` at ``sigma = 0`` (clean data), ``-inf`` at ``alpha = 0``."""
    alpha, sigma = level
    if sigma <= 0.0:
        return math.inf
    if alpha <= 0.0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


# ---- weights of the exactly integrated polynomial terms --------------------------------------------------------
def _data_weights(h: float, n: int, c: float) -> list[float]:
    """``g_k = int_0^h e^{-c(h-u)} (u/h)^k du`` for ``k < n``: ``g_0 = (1 - e^{-ch}) / c``, and by parts
    ``g_k = (1 - k g_{k-1} / h) / c``. All equal ``1 / c`` for ``h = inf``."""
    if math.isinf(h):
        return [1.0 / c] * n
    g = [-math.expm1(-c * h) / c]
    for k in range(1, n):
        g.append((1.0 - k * g[-1] / h) / c)
    return g


def _noise_weights(h: float, n: int) -> list[float]:
    """``q_k = int_0^h e^{-u} (u/h)^k du``: ``q_0 = 1 - e^{-h}``, by parts ``q_k = -e^{-h} + k q_{k-1} / h``."""
    if math.isinf(h):
        return [1.0] + [0.0] * (n - 1)
    q = [-math.expm1(-h)]
    for k in range(1, n):
        q.append(-math.exp(-h) + k * q[-1] / h)
    return q


def _monomial_matrix(r: Sequence[float]) -> np.ndarray:
    """``M`` with ``poly(u/h) = sum_k (M @ m)_k (u/h)^k`` interpolating outputs ``m_j`` at ``u/h = r_j``."""
    n = len(r)
    vander = np.array([[rj**k for k in range(n)] for rj in r], dtype=np.float64)
    return np.linalg.inv(vander)


def _frame(base: Level, target: Level, form: str, sde: bool) -> tuple[float, float, float, float]:
    """``(h, x_coeff, model_prefactor, noise_std)`` of one step from ``base`` to ``target``."""
    (a_s, s_s), (a_t, s_t) = base, target
    h = half_log_snr(target) - half_log_snr(base)
    if form == "data":
        ratio = s_t / s_s
        if not sde:
            return h, ratio, a_t, 0.0
        return h, ratio * math.exp(-h), 2.0 * a_t, s_t * math.sqrt(-math.expm1(-2.0 * h))
    k = a_t * s_s / a_s  # sigma_t e^h, finite even when sigma_t = 0
    if not sde:
        return h, a_t / a_s, -k, 0.0
    return h, a_t / a_s, -2.0 * k, math.sqrt(max(k * k - s_t * s_t, 0.0))


def _check(form: str, variant: str | None = None) -> None:
    if form not in FORMS:
        raise ValueError(f"form={form!r} is not supported; choose one of {FORMS}")
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; choose one of {VARIANTS}")


def exponential_step(
    base: Level,
    target: Level,
    nodes: Sequence[Level],
    form: str = "data",
    sde: bool = False,
    variant: str = "exact",
) -> LinearStep:
    """One exponential-integrator step from ``base`` (where the sample is) to ``target``.

    The model term is the polynomial in ``u / h`` through the outputs at ``nodes`` (any order; one node gives
    DDIM / DPM-Solver-1), integrated exactly (``variant="exact"``: DPM-Solver "heun" 2nd order, DEIS, the
    single-step DPM-Solver-3). Diffusers-compatible approximations: ``"midpoint"`` (2 nodes) weights the slope
    term by ``g_0 / 2`` instead of ``g_1`` (DPM-Solver++ 2M as published); ``"dpmsolver_3m"`` (3 nodes) weights
    the curvature term by half its integral (the 3M update of the reference DPM-Solver code, which is therefore
    2nd-order accurate). Returns coefficients for the outputs in the order of ``nodes``.
    """
    _check(form, variant)
    h, x_coeff, pre, noise = _frame(base, target, form, sde)
    n = len(nodes)
    if n == 0:
        raise ValueError("nodes must hold at least one noise level (the one of the newest model output)")
    if n > 1 and math.isinf(h):
        raise ValueError("a step to sigma = 0 can only be first order (pass one node)")
    if h == 0.0:  # a zero-length step (a grid that repeats its last level) leaves the sample as it is
        return LinearStep(1.0, (0.0,) * n)
    w = _data_weights(h, n, 2.0 if sde else 1.0) if form == "data" else _noise_weights(h, n)
    if variant == "midpoint" and n == 2:
        w[1] = 0.5 * w[0]
    elif variant == "dpmsolver_3m" and n == 3:
        w[2] = 0.5 * w[2]
    lam_s = half_log_snr(base)
    r = [(half_log_snr(lv) - lam_s) / h for lv in nodes] if n > 1 else [0.0]
    keep = [j for j in range(n) if r[j] not in r[:j]]  # a repeated noise level adds no information: skip it
    coeffs = np.zeros(n)
    coeffs[keep] = pre * (np.asarray(w[: len(keep)]) @ _monomial_matrix([r[j] for j in keep]))
    return LinearStep(x_coeff, tuple(float(c) for c in coeffs), noise)


def multistep(
    levels: Sequence[Level], target: Level, order: int, form: str = "data", sde: bool = False, variant: str = "exact"
) -> LinearStep:
    """Multistep update from ``levels[0]`` (newest; older ones follow) to ``target`` using ``order`` outputs
    (a step to ``sigma = 0`` is first order: the older outputs then get zero coefficients).

    ``levels[j]`` is where output ``j`` (newest first) was computed. DPM-Solver(++) ``kM``, DEIS (noise form,
    exact), and the SDE variants are all this function with different ``form``/``sde``/``variant``.
    """
    if not 1 <= order <= len(levels):
        raise ValueError(f"order={order} needs between 1 and {len(levels)} stored outputs")
    requested = order
    lams = [half_log_snr(lv) for lv in levels[:order]]
    while order > 1 and len(set(lams[:order])) < order:  # a repeated noise level (duplicate timestep): lower order
        order -= 1
    if math.isinf(half_log_snr(target)) and order > 1:  # the jump to sigma = 0: first order (no limit for more)
        first = exponential_step(levels[0], target, levels[:1], form, sde, variant)
        return LinearStep(first.x, first.m + (0.0,) * (requested - 1), first.noise)
    step = exponential_step(levels[0], target, levels[:order], form, sde, variant)
    return LinearStep(step.x, step.m + (0.0,) * (requested - order), step.noise)


# ---- UniPC (Zhao et al. 2023) ----------------------------------------------------------------------------------
def _unipc_b(h: float, order: int, form: str, variant: str) -> tuple[float, float, list[float]]:
    """``(h_phi_1, B(h), b)`` of UniPC (eq. 7-9 / Algorithm 2) with ``hh = -h`` (data) or ``h`` (noise):
    ``h_phi_1 = e^{hh} - 1``, ``b_i = i! h_phi_{i+1}(hh) / B(h)`` for ``i = 1..order``; ``B(h) = hh`` (bh1) or
    ``e^{hh} - 1`` (bh2)."""
    hh = -h if form == "data" else h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else h_phi_1
    b, fact = [], 1
    for i in range(1, order + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return h_phi_1, b_h, b


def _unipc_frame(base: Level, target: Level, form: str) -> tuple[float, float, float]:
    (a_s, s_s), (a_t, s_t) = base, target
    h = half_log_snr(target) - half_log_snr(base)
    return h, (s_t / s_s if form == "data" else a_t / a_s), (a_t if form == "data" else s_t)


def unipc_step(
    levels: Sequence[Level],
    target: Level,
    order: int,
    form: str = "data",
    variant: str = "bh2",
    corrector: bool = False,
) -> LinearStep:
    """UniPC predictor (UniP) or corrector (UniC) of ``order`` from ``levels[0]`` to ``target``.

    Predictor: coefficients for outputs at ``levels[:order]`` (newest first). Corrector: the first coefficient is
    for the *new* output at ``target``, followed by those at ``levels[:order]``; the base sample is the one at
    ``levels[0]`` before the predictor moved it. A step to ``sigma = 0`` is taken at first order (the higher
    order terms have no limit there; Diffusers' ``bh1`` returns NaN).
    """
    _check(form)
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"solver_type={variant!r} is not supported for UniPC; choose one of {UNIPC_VARIANTS}")
    if not 1 <= order <= len(levels):
        raise ValueError(f"order={order} needs between 1 and {len(levels)} stored outputs")
    lams = [half_log_snr(lv) for lv in levels[:order]]
    if len(set(lams)) < order:  # a repeated noise level (duplicate timestep): lower the order, zero the rest
        k = next(j for j in range(1, order) if lams[j] in lams[:j])
        low = unipc_step(levels, target, k, form, variant, corrector)
        return LinearStep(low.x, low.m + (0.0,) * (order - k))
    h, x_coeff, pre = _unipc_frame(levels[0], target, form)
    if h == 0.0:  # a zero-length step (a grid that repeats its last level) leaves the sample as it is
        return LinearStep(1.0, (0.0,) * (order + (1 if corrector else 0)))
    if math.isinf(h) or (form == "noise" and target[1] == 0.0):
        if corrector:
            raise ValueError("UniPC does not correct a sample at sigma = 0")
        first = exponential_step(levels[0], target, levels[:1], form)
        return LinearStep(first.x, first.m + (0.0,) * (order - 1))
    h_phi_1, b_h, b = _unipc_b(h, order, form, variant)
    lam0 = half_log_snr(levels[0])
    rks = [(half_log_snr(lv) - lam0) / h for lv in levels[1:order]]
    # 1. the first-order (DDIM) part: -pre * h_phi_1 * m0
    m = np.zeros(order + (1 if corrector else 0))
    i0 = 1 if corrector else 0
    m[i0] = -pre * h_phi_1
    # 2. the weights rho of the differences D1_k = (m_k - m0) / r_k (and D1_t = m_t - m0 for the corrector)
    if corrector:
        rmat = np.array([[rk ** (i - 1) for rk in rks + [1.0]] for i in range(1, order + 1)])
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(rmat, np.array(b))
    elif order >= 2:
        rmat = np.array([[rk ** (i - 1) for rk in rks] for i in range(1, order)])
        rhos = np.array([0.5]) if order == 2 else np.linalg.solve(rmat, np.array(b[:-1]))
    else:
        rhos = np.zeros(0)
    scale = -pre * b_h
    for k, rk in enumerate(rks):  # D1_k = (m_k - m0) / r_k
        m[i0 + 1 + k] += scale * rhos[k] / rk
        m[i0] -= scale * rhos[k] / rk
    if corrector:  # D1_t = m_t - m0
        m[0] += scale * rhos[-1]
        m[i0] -= scale * rhos[-1]
    return LinearStep(x_coeff, tuple(float(c) for c in m))
