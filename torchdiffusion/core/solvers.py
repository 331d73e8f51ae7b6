"""Single-step update rules: given ``x0``/``eps`` estimates at the current noise level, produce the next sample.

Variance-preserving rules take ``alpha_bar`` values (Python floats) of the current step ``t`` and the previous
(less noisy) step ``s``; variance-exploding (k-diffusion) rules take noise levels ``sigma``. No state is kept
here: multistep histories live in the scheduler adapters (or :mod:`torchdiffusion.core.multistep`).
"""

from __future__ import annotations

import math

import torch

VARIANCE_TYPES: tuple[str, ...] = (
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
)


# ---- DDPM (Ho et al. 2020) ---------------------------------------------------------------------------------
def ddpm_posterior_mean(x0: torch.Tensor, sample: torch.Tensor, ab_t: float, ab_s: float) -> torch.Tensor:
    """Mean of ``q(x_s | x_t, x0)`` (eq. 7), for any earlier step ``s < t`` (so strided grids work):

    ``mu = sqrt(ab_s) beta / (1 - ab_t) x0 + sqrt(alpha) (1 - ab_s) / (1 - ab_t) x_t`` with
    ``alpha = ab_t / ab_s`` and ``beta = 1 - alpha``.
    """
    alpha = ab_t / ab_s
    beta = 1.0 - alpha
    c_x0 = math.sqrt(ab_s) * beta / (1.0 - ab_t)
    c_xt = math.sqrt(alpha) * (1.0 - ab_s) / (1.0 - ab_t)
    return c_x0 * x0 + c_xt * sample


def ddpm_std(
    variance_type: str, ab_t: float, ab_s: float, predicted_variance: torch.Tensor | None = None
) -> float | torch.Tensor:
    """Standard deviation of the DDPM step noise.

    * ``fixed_small`` / ``fixed_small_log``: posterior variance ``beta~ = (1 - ab_s) / (1 - ab_t) beta`` (floored
      at 1e-20, as Diffusers does)
    * ``fixed_large`` / ``fixed_large_log``: ``beta`` (the ``_log`` forms are the same noise computed in log space;
      Diffusers' ``fixed_large_log`` takes the square root of a log and returns NaN)
    * ``learned``: the model output is the variance itself; ``learned_range``: the model output ``v`` in [-1, 1]
      interpolates ``log beta~ .. log beta`` (Nichol & Dhariwal 2021, eq. 15)
    """
    beta = 1.0 - ab_t / ab_s
    small = max((1.0 - ab_s) / (1.0 - ab_t) * beta, 1e-20)
    if variance_type in ("fixed_small", "fixed_small_log"):
        return math.sqrt(small)
    if variance_type in ("fixed_large", "fixed_large_log"):
        return math.sqrt(beta)
    if predicted_variance is None:
        raise ValueError(
            f"variance_type={variance_type!r} needs a model_output with twice the sample's channels "
            "(mean and variance); got one with the same channels"
        )
    if variance_type == "learned":
        return predicted_variance.clamp(min=0).sqrt()
    if variance_type == "learned_range":
        frac = (predicted_variance + 1) / 2
        log_var = frac * math.log(max(beta, 1e-20)) + (1 - frac) * math.log(small)
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
