"""What the model predicts, turned into ``x0`` (clean sample) and ``eps`` (noise), plus x0 clipping.

A noisy sample is ``x_t = alpha_t x0 + sigma_t eps`` with ``alpha_t = sqrt(alpha_bar_t)`` and
``sigma_t = sqrt(1 - alpha_bar_t)`` for variance-preserving schedules (for flow matching ``alpha_t = 1 - s``,
``sigma_t = s``). The model output means:

* ``epsilon``       the noise ``eps``
* ``sample``        the clean sample ``x0``
* ``v_prediction``  ``v = alpha_t eps - sigma_t x0`` (Salimans & Ho 2022, sec. 4)
* ``flow``          the velocity ``u = eps - x0`` of a rectified flow

Coefficients may be Python floats (one timestep for the whole batch) or tensors that broadcast against the
sample (see :func:`expand_as`).
"""

from __future__ import annotations

import torch

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction")
"""``prediction_type`` values of variance-preserving schedulers (flow matching adds ``"flow"``)."""

Coeff = float | torch.Tensor

# Smallest alpha_bar used when dividing by alpha (zero-terminal-SNR schedules have alpha_bar_T = 0 exactly):
# the same floor Diffusers' Euler/DPM schedulers put on their last alpha_bar.
ALPHA_BAR_FLOOR = 2.0**-24


def expand_as(coeff: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(B,)`` (or a scalar) to ``(B, 1, 1, ...)`` so it broadcasts over ``x``."""
    coeff = coeff.to(device=x.device, dtype=x.dtype).flatten()
    return coeff.view(coeff.shape[0], *([1] * (x.ndim - 1))) if coeff.numel() > 1 else coeff.view([1] * x.ndim)


def to_x0_eps(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_t: Coeff, sigma_t: Coeff, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x0, eps)`` from a model output, the noisy ``sample`` and its ``alpha_t``, ``sigma_t``.

    Shapes: ``model_output`` and ``sample`` are ``(B, C, ...)``; outputs the same.
    """
    if prediction_type == "epsilon":
        eps = model_output
        # alpha_t = 0 (zero terminal SNR) leaves x0 undefined; divide by a floor instead of returning inf/NaN
        floor = ALPHA_BAR_FLOOR**0.5
        safe = alpha_t.clamp(min=floor) if isinstance(alpha_t, torch.Tensor) else max(alpha_t, floor)
        x0 = (sample - sigma_t * eps) / safe
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - alpha_t * x0) / sigma_t
    elif prediction_type == "v_prediction":  # x0 = a x - s v, eps = a v + s x  (when a^2 + s^2 = 1)
        x0 = alpha_t * sample - sigma_t * model_output
        eps = alpha_t * model_output + sigma_t * sample
    elif prediction_type == "flow":  # x = (1 - s) x0 + s eps, u = eps - x0
        x0 = sample - sigma_t * model_output
        eps = sample + alpha_t * model_output
    else:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; choose one of "
            f"{', '.join(map(repr, PREDICTION_TYPES + ('flow',)))}"
        )
    return x0, eps


def eps_from_x0(x0: torch.Tensor, sample: torch.Tensor, alpha_t: Coeff, sigma_t: Coeff) -> torch.Tensor:
    """The noise consistent with ``x0``: ``eps = (x_t - alpha_t x0) / sigma_t``."""
    return (sample - alpha_t * x0) / sigma_t


def threshold_sample(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, sec. 2.3): per sample, ``s`` = the ``ratio`` quantile of ``|x0|``
    clamped to ``[1, max_value]``; clip ``x0`` to ``[-s, s]`` and divide by ``s``. Shape ``(B, ...)`` kept.
    """
    dtype, shape = x0.dtype, x0.shape
    flat = x0.reshape(shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile needs float32/64
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)


def process_x0(x0: torch.Tensor, config) -> torch.Tensor:
    """Apply a scheduler config's ``thresholding`` (wins) or ``clip_sample`` (to ``±clip_sample_range``) to ``x0``."""
    if config.get("thresholding", False):
        return threshold_sample(
            x0, config.get("dynamic_thresholding_ratio", 0.995), config.get("sample_max_value", 1.0)
        )
    if config.get("clip_sample", False):
        r = config.get("clip_sample_range", 1.0)
        return x0.clamp(-r, r)
    return x0


def add_noise(
    original_samples: torch.Tensor, noise: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor
) -> torch.Tensor:
    """Forward process ``x_t = alpha_t x0 + sigma_t eps``; ``alpha_t``, ``sigma_t``: scalars or per sample ``(B,)``."""
    x = original_samples
    return expand_as(alpha_t, x) * x + expand_as(sigma_t, x) * noise.to(x.device)


def get_velocity(
    sample: torch.Tensor, noise: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor
) -> torch.Tensor:
    """The ``v_prediction`` training target ``v = alpha_t eps - sigma_t x0`` (``sample`` is ``x0``)."""
    return expand_as(alpha_t, sample) * noise.to(sample.device) - expand_as(sigma_t, sample) * sample


def check_same_shape(model_output: torch.Tensor, sample: torch.Tensor, channels_factor: int = 1) -> None:
    """``TypeError``/``ValueError`` naming ``model_output``/``sample`` unless they are tensors of matching shape.

    ``channels_factor=2`` also accepts a model output carrying a learned variance in twice the channels.
    """
    for name, v in (("model_output", model_output), ("sample", sample)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    ok = model_output.shape == sample.shape
    if not ok and channels_factor > 1 and model_output.ndim == sample.ndim >= 2:
        ok = (model_output.shape[0], *model_output.shape[2:]) == (sample.shape[0], *sample.shape[2:]) and (
            model_output.shape[1] == sample.shape[1] * channels_factor
        )
    if not ok:
        raise ValueError(
            f"model_output shape {tuple(model_output.shape)} does not match sample shape {tuple(sample.shape)}"
        )


# ---- variance-exploding (k-diffusion) form: x = x0 + sigma eps, model fed x / sqrt(1 + sigma^2) ---------------
def x0_from_ve(
    model_output: torch.Tensor, sample: torch.Tensor, sigma: Coeff, prediction_type: str, sigma_v: Coeff | None = None
) -> torch.Tensor:
    """``x0`` from a model output when ``sample = x0 + sigma eps`` (the VP model saw ``sample / sqrt(1+sigma^2)``).

    ``epsilon``: ``x - sigma eps``; ``v_prediction``: ``x / (1+s^2) - s v / sqrt(1+s^2)`` with ``s = sigma_v``
    (defaults to ``sigma``); ``sample``: the output itself.
    """
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":
        s = sigma if sigma_v is None else sigma_v
        return model_output * (-s / (s**2 + 1) ** 0.5) + sample / (s**2 + 1)
    if prediction_type == "sample":
        return model_output
    raise ValueError(
        f"prediction_type={prediction_type!r} is not supported; choose one of {', '.join(map(repr, PREDICTION_TYPES))}"
    )


# ---- EDM preconditioning (Karras et al. 2022, table 1) -------------------------------------------------------
def edm_c_in(sigma: Coeff, sigma_data: float = 0.5) -> Coeff:
    """Input scaling ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``."""
    return 1 / (sigma**2 + sigma_data**2) ** 0.5


def edm_c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """Noise conditioning ``c_noise = log(sigma) / 4`` (the "timestep" an EDM model is given)."""
    return 0.25 * torch.log(sigma)


def edm_denoise(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    sigma: Coeff,
    sigma_data: float = 0.5,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """``D(x) = c_skip x + c_out F(x)`` with ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = ±s sd / sqrt(s^2 + sd^2)``
    (negative for ``v_prediction``)."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported here; choose 'epsilon' or 'v_prediction'"
        )
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip * sample + (c_out if prediction_type == "epsilon" else -c_out) * model_output
