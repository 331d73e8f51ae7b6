"""Shared base of the k-diffusion style schedulers (Euler, Euler ancestral, Heun, LMS, KDPM2, KDPM2 ancestral).

They sample in variance-exploding form ``x = x0 + sigma eps`` over the noise levels of a discrete training
schedule: the model is fed ``x / sqrt(1 + sigma^2)`` (what it saw in training) at fractional timesteps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import prediction as P
from ..core.prediction import ALPHA_BAR_FLOOR
from ..core.spacing import discrete_sigma_schedule, sigma_grid_kind
from ..utils.outputs import BaseOutput
from .scheduling_utils import AlphaBarSchedulerMixin, StepIndexMixin, reject_integer_index


@dataclass
class SchedulerStepOutput(BaseOutput):
    """``step`` output: ``prev_sample`` ``(B, C, ...)`` for the next model call and the ``pred_original_sample``
    (x0 estimate) of this step. Each scheduler module subclasses it under Diffusers' output class name."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def interleave(first: float, rest: np.ndarray, last: float | None = None) -> np.ndarray:
    """``[first, r0, r0, r1, r1, ..., last]``: the per-model-call layout of two-stage samplers (Heun, KDPM2)."""
    return np.concatenate([[first], np.repeat(rest, 2)] + ([] if last is None else [[last]]))


def two_stage_check(num_train_timesteps: int | None, config) -> None:
    """Two-stage samplers accept Diffusers' ``num_train_timesteps`` argument only when it matches the config."""
    if num_train_timesteps not in (None, config.num_train_timesteps):
        raise ValueError(
            f"num_train_timesteps={num_train_timesteps!r} must match the config's {config.num_train_timesteps}"
        )


class SigmaStepMixin(StepIndexMixin):
    """Sampling in ``x = x0 + sigma eps`` form over ``self.sigmas`` (Python floats in ``self._sig``), one entry per
    model call plus the final level: argument checks for ``step``, ``add_noise`` and ``get_velocity``."""

    def _begin_step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> int:
        """Validate ``step`` arguments; return the step index."""
        reject_integer_index(timestep, type(self).__name__)
        P.check_same_shape(model_output, sample)
        return self._index_for_step(timestep)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """``x0 + sigma_t eps`` with the sigma of each sample's timestep (from this scheduler's ``timesteps``)."""
        if not isinstance(noise, torch.Tensor) or noise.shape != original_samples.shape:
            raise ValueError(f"noise must be a tensor shaped like original_samples {tuple(original_samples.shape)}")
        idx = self._indices_for(timesteps, original_samples.shape[0])
        sigma = torch.tensor([self._sig[i] for i in idx], dtype=original_samples.dtype, device=original_samples.device)
        return original_samples + P.expand_as(sigma, original_samples) * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """The ``v_prediction`` target at the noise level of each sample's timestep (``sample`` is ``x0``)."""
        if not isinstance(noise, torch.Tensor) or noise.shape != sample.shape:
            raise ValueError(f"noise must be a tensor shaped like sample {tuple(sample.shape)}")
        idx = [self.index_for_timestep(v) for v in torch.as_tensor(timesteps).flatten().tolist()]
        s = torch.tensor([self._sig[i] for i in idx], dtype=torch.float64)
        a, sv = (1 / (1 + s**2)).sqrt(), (s**2 / (1 + s**2)).sqrt()
        return P.get_velocity(sample, noise, a, sv)


class KarrasSigmaMixin(SigmaStepMixin, AlphaBarSchedulerMixin):
    """Training noise levels, sigma grids, input scaling, ``add_noise`` and step bookkeeping in sigma space.

    Attributes after ``set_timesteps``: ``timesteps`` ``(n,)`` float32, ``sigmas`` ``(n + 1,)`` float32 (CPU).
    """

    _round_karras_timesteps = False  # KDPM2 rounds the timesteps of Karras grids

    def _init_sigmas(self) -> None:
        """Call at the end of ``__init__``: schedule, training sigmas and the full-length default grid."""
        self._init_schedule()
        sigma_grid_kind(self.config)  # validates the use_*_sigmas flags
        ab = self.schedule.alphas_cumprod64.clone()
        if ab[-1] <= 0:  # zero terminal SNR: a finite largest sigma (the floor Diffusers uses)
            ab[-1] = ALPHA_BAR_FLOOR
        self._train_sigmas = ((1 - ab) / ab).sqrt().numpy()
        T = len(self._train_sigmas)
        self._set_sigma_grid(np.arange(T - 1, -1, -1, dtype=np.float64), np.append(self._train_sigmas[::-1], 0.0))
        self.num_inference_steps = None

    def _set_sigma_grid(self, timesteps: np.ndarray, sigmas: np.ndarray, device: Any = None) -> None:
        self.timesteps = torch.from_numpy(np.asarray(timesteps, dtype=np.float32)).to(device)
        self.sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
        self._sig = [float(s) for s in self.sigmas]  # Python floats for the per-step maths
        self._reset_steps()

    def _compute_sigma_schedule(self, num_inference_steps=None, timesteps=None, sigmas=None):
        """``(timesteps, sigmas)`` float64 arrays for this config (see ``core.spacing.discrete_sigma_schedule``)."""
        return discrete_sigma_schedule(
            self._train_sigmas, self.config, num_inference_steps, timesteps, sigmas, self._round_karras_timesteps
        )

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Any = None,
        sigmas: Any = None,
    ) -> None:
        """Pick the sampling grid: ``num_inference_steps``, or custom ``timesteps``, or custom ``sigmas``."""
        ts, sig = self._compute_sigma_schedule(num_inference_steps, timesteps, sigmas)
        self._set_sigma_grid(ts, sig, device)
        self.num_inference_steps = len(ts)

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Standard deviation of the starting noise: the largest sigma (``sqrt(sigma^2 + 1)`` for leading grids)."""
        top = self.sigmas.max()
        return (
            top if self.config.get("timestep_spacing", "linspace") in ("linspace", "trailing") else (top**2 + 1) ** 0.5
        )

    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        """``sample / sqrt(sigma^2 + 1)``: the variance-preserving input the model was trained on."""
        i = self._index_for_step(timestep)
        self.is_scale_input_called = True
        return sample / ((self._input_sigma(i) ** 2 + 1) ** 0.5)

    def _input_sigma(self, i: int) -> float:
        """Noise level of model call ``i`` (two-stage samplers override it for their second call)."""
        return self._sig[i]

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)
