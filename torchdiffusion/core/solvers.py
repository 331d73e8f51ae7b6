"""Single-step update rules: given ``x0``/``eps`` estimates at the current noise level, produce the next sample.

Variance-preserving rules take ``alpha_bar`` values (Python floats) of the current step ``t`` and the previous
(less noisy) step ``s``; variance-exploding (k-diffusion) rules take noise levels ``sigma``. No state is kept
here: multistep histories live in the scheduler adapters (or :mod:`torchdiffusion.core.exponential_integrators`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .prediction import Coeff

VARIANCE_TYPES: tuple[str, ...] = (
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
)


# ---- DDPM (Ho et al. 2020) ---------------------------------------------------------------------------------
def ddpm_posterior_mean(x0: torch.Tensor, sample: torch.Tensor, ab_t: Coeff, ab_s: Coeff) -> torch.Tensor:
    """Mean of ``q(x_s | x_t, x0)`` (eq. 7), for any earlier step ``s < t`` (so strided grids work):

    ``mu = sqrt(ab_s) beta / (1 - ab_t) x0 + sqrt(alpha) (1 - ab_s) / (1 - ab_t) x_t`` with
    ``alpha = ab_t / ab_s`` and ``beta = 1 - alpha``. ``ab_t``/``ab_s`` are floats or 0-d tensors; the
    coefficients are computed in their precision (Diffusers' DDPM passes float32 tensors).
    """
    alpha = ab_t / ab_s
    beta = 1.0 - alpha
    c_x0 = ab_s**0.5 * beta / (1.0 - ab_t)
    c_xt = alpha**0.5 * (1.0 - ab_s) / (1.0 - ab_t)
    return c_x0 * x0 + c_xt * sample


def ddpm_std(
    variance_type: str | None, ab_t: Coeff, ab_s: Coeff, predicted_variance: torch.Tensor | None = None
) -> Coeff:
    """Standard deviation of the DDPM step noise.

    * ``fixed_small`` / ``fixed_small_log`` (and ``None``, as in Diffusers): posterior variance
      ``beta~ = (1 - ab_s) / (1 - ab_t) beta`` (floored at 1e-20, as Diffusers does)
    * ``fixed_large`` / ``fixed_large_log``: ``beta`` (the ``_log`` forms are the same noise computed in log space;
      Diffusers' ``fixed_large_log`` takes the square root of a log and returns NaN)
    * ``learned``: the model output is the variance itself; ``learned_range``: the model output ``v`` in [-1, 1]
      interpolates ``log beta~ .. log beta`` (Nichol & Dhariwal 2021, eq. 15)
    """
    beta = 1.0 - ab_t / ab_s
    small = (1.0 - ab_s) / (1.0 - ab_t) * beta
    small = small.clamp(min=1e-20) if isinstance(small, torch.Tensor) else max(small, 1e-20)
    if variance_type in (None, "fixed_small", "fixed_small_log"):
        return small**0.5
    if variance_type in ("fixed_large", "fixed_large_log"):
        return beta**0.5
    if predicted_variance is None:
        raise ValueError(
            f"variance_type={variance_type!r} needs a model_output with twice the sample's channels "
            "(mean and variance); got one with the same channels"
        )
    if variance_type == "learned":
        return predicted_variance.clamp(min=0).sqrt()
    if variance_type == "learned_range":
        frac = (predicted_variance + 1) / 2
        log_var = frac * math.log(max(float(beta), 1e-20)) + (1 - frac) * math.log(float(small))
        return torch.exp(0.5 * log_var)
    raise ValueError(f"variance_type={variance_type!r} is not supported; choose one of {', '.join(VARIANCE_TYPES)}")


# ---- DDIM (Song et al. 2021) -------------------------------------------------------------------------------
def ddim_std(ab_t: float, ab_s: float, eta: float) -> float:
    """``sigma_t(eta) = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s)`` (eq. 16); 0 for ``eta = 0``."""
    return eta * math.sqrt(max((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s), 0.0))


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, ab_s: float, std: float = 0.0, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """DDIM update (eq. 12): ``x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - std^2) eps + std z``.

    ``1 - ab_s - std^2`` is floored at 0, so ``eta > 1`` gives a finite (if over-noised) sample instead of NaN.
    """
    direction = math.sqrt(max(1.0 - ab_s - std * std, 0.0))
    prev = math.sqrt(ab_s) * x0 + direction * eps
    if noise is not None and std > 0:
        prev = prev + std * noise
    return prev


# ---- PNDM (Liu et al. 2022) --------------------------------------------------------------------------------
def pndm_transfer(sample: torch.Tensor, eps: torch.Tensor, ab_t: float, ab_s: float) -> torch.Tensor:
    """The PNDM transfer function phi (eq. 11): move ``x_t`` to ``x_s`` along the noise estimate ``eps``.

    ``x_s = sqrt(ab_s / ab_t) x_t - (ab_s - ab_t) eps / (ab_t sqrt(1 - ab_s) + sqrt(ab_t (1 - ab_t) ab_s))``
    (algebraically the DDIM step with ``eta = 0``).
    """
    denom = ab_t * math.sqrt(1.0 - ab_s) + math.sqrt(ab_t * (1.0 - ab_t) * ab_s)
    return math.sqrt(ab_s / ab_t) * sample - ((ab_s - ab_t) / denom) * eps


# Adams-Bashforth weights for equally spaced steps, newest first (PLMS, eq. 12 and its lower-order warm-up).
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def adams_bashforth(history: list[torch.Tensor]) -> torch.Tensor:
    """Combine up to 4 past noise estimates (oldest first) with Adams-Bashforth weights of that order."""
    weights = ADAMS_BASHFORTH[len(history)]
    out = weights[0] * history[-1]
    for w, e in zip(weights[1:], reversed(history[:-1])):
        out = out + w * e
    return out


# ---- k-diffusion samplers in sigma space (Karras et al. 2022) ---------------------------------------------
def to_d(sample: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """The probability-flow ODE derivative ``dx/dsigma = (x - x0) / sigma`` (eq. 4 with ``s(t) = 1``)."""
    return (sample - x0) / sigma


def euler_step(sample: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of the ODE from ``sigma`` to ``sigma_next``."""
    return sample + to_d(sample, x0, sigma) * (sigma_next - sigma)


def ancestral_sigmas(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part down to ``sigma_down`` and fresh noise ``sigma_up``.

    ``sigma_up = min(sigma_to, eta sqrt(sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2))``,
    ``sigma_down = sqrt(sigma_to^2 - sigma_up^2)``, so the marginal at ``sigma_to`` is right.
    """
    up = min(sigma_to, eta * math.sqrt(max(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2, 0.0)))
    return math.sqrt(max(sigma_to**2 - up**2, 0.0)), up


def churn_sigma(sigma: float, s_churn: float, s_tmin: float, s_tmax: float, num_steps: int) -> float:
    """Karras et al. 2022, Algorithm 2: the raised noise level ``sigma_hat = sigma (1 + gamma)``."""
    gamma = min(s_churn / num_steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    return sigma * (gamma + 1)


def lms_coefficients(sigmas: list[float], i: int, order: int) -> list[float]:
    """Linear multistep weights for the step ``sigmas[i] -> sigmas[i+1]`` using derivatives at
    ``sigmas[i], sigmas[i-1], ...`` (newest first): the integral over the step of each Lagrange basis polynomial.

    The integrals are exact (polynomial antiderivatives) rather than numerical quadrature.
    """
    nodes = [sigmas[i - k] for k in range(order)]
    coeffs = []
    for j in range(order):
        poly = np.poly1d([1.0])
        for k in range(order):
            if k != j:
                poly = poly * np.poly1d([1.0, -nodes[k]]) / (nodes[j] - nodes[k])
        anti = np.polyint(poly)
        coeffs.append(float(anti(sigmas[i + 1]) - anti(sigmas[i])))
    return coeffs


# ---- consistency models (LCM, Luo et al. 2023) ------------------------------------------------------------
def consistency_scalings(
    timestep: float, timestep_scaling: float = 10.0, sigma_data: float = 0.5
) -> tuple[float, float]:
    """Boundary-condition scalings ``(c_skip, c_out)`` of a discrete-time consistency model."""
    t = timestep * timestep_scaling
    return sigma_data**2 / (t**2 + sigma_data**2), t / (t**2 + sigma_data**2) ** 0.5
