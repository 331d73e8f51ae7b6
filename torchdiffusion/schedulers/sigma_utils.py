"""Shared base of the k-diffusion style schedulers (Euler, Euler ancestral, Heun, LMS, KDPM2, KDPM2 ancestral),
and ``DPM2Base``, the config and two-call step of both KDPM2 schedulers.

They sample in variance-exploding form ``x = x0 + sigma eps`` over the noise levels of a discrete training
schedule: the model is fed ``x / sqrt(1 + sigma^2)`` (what it saw in training) at fractional timesteps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from ..core import solvers as S
from ..core.grids import discrete_sigma_schedule, sigma_grid_kind, sigma_to_t
from ..core.schedules import vp_from_ve
from ..utils.outputs import BaseOutput
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    SchedulerMixin,
    StepIndexMixin,
    TrainedScheduleMixin,
    check_noise,
    noise_like,
    reject_integer_index,
)


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

    # Diffusers' Euler-type schedulers refuse an integer timestep in ``step`` (almost always an ``enumerate`` index);
    # the others (Heun, LMS, KDPM2, ...) look it up like a float, so ``step(out, 999, x)`` finds ``999.0``.
    _integer_timestep_is_index = False

    def _begin_step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> int:
        """Validate ``step`` arguments; return the step index."""
        if self._integer_timestep_is_index:
            reject_integer_index(timestep, type(self).__name__)
        P.check_same_shape(model_output, sample)
        return self._index_for_step(timestep)

    def _churn(
        self, x: torch.Tensor, model_output: torch.Tensor, sigma: float, churn: tuple, generator: Any
    ) -> tuple[torch.Tensor, float]:
        """Stochastic churn (Karras et al. 2022, Alg. 2), ``churn = (s_churn, s_tmin, s_tmax, s_noise)``: returns
        ``(x, sigma_hat)``, ``x`` raised from ``sigma`` to ``sigma_hat`` by fresh noise (drawn like
        ``model_output``, scaled by ``s_noise``); unchanged when ``s_churn`` is 0 or sigma is outside the range."""
        s_churn, s_tmin, s_tmax, s_noise = churn
        sigma_hat = S.churn_sigma(sigma, s_churn, s_tmin, s_tmax, len(self._sig) - 1)
        if sigma_hat > sigma:
            x = x + noise_like(model_output, generator) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        return x, sigma_hat

    def _set_levels(self, timesteps: torch.Tensor, sigmas: torch.Tensor, device: Any = None) -> None:
        """Install a grid: ``timesteps`` ``(n,)`` (moved to ``device``), ``sigmas`` ``(n + 1,)`` ending in the final."""
        self.timesteps = timesteps.to(device)
        self.sigmas = sigmas
        self._sig = sigmas.tolist()  # Python floats for the per-step maths
        self._reset_steps()

    def _sigma_of(self, timesteps: Any, like: torch.Tensor) -> torch.Tensor:
        """The noise level of each sample's timestep, ``(B, 1, ...)`` in ``like``'s dtype and device."""
        idx = self._indices_for(timesteps, like.shape[0])
        return P.expand_as(torch.tensor([self._sig[i] for i in idx], dtype=like.dtype, device=like.device), like)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """``x0 + sigma_t eps`` with the sigma of each sample's timestep (from this scheduler's ``timesteps``)."""
        check_noise(noise, original_samples)
        return original_samples + self._sigma_of(timesteps, original_samples) * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """The ``v_prediction`` target at the noise level of each sample's timestep (``sample`` is ``x0``)."""
        check_noise(noise, sample, "sample")
        idx = [self.index_for_timestep(v) for v in torch.as_tensor(timesteps).flatten().tolist()]
        a, sv = vp_from_ve(torch.tensor([self._sig[i] for i in idx], dtype=torch.float64))
        return P.get_velocity(sample, noise, a, sv)


class KarrasSigmaMixin(SigmaStepMixin, TrainedScheduleMixin):
    """Training noise levels, sigma grids, input scaling, ``add_noise`` and step bookkeeping in sigma space.

    Attributes after ``set_timesteps``: ``timesteps`` ``(n,)`` float32, ``sigmas`` ``(n + 1,)`` float32 (CPU).
    """

    _round_karras_timesteps = False  # KDPM2 rounds the timesteps of Karras grids

    def _init_sigmas(self) -> None:
        """Call at the end of ``__init__``: schedule, training sigmas and the full-length default grid."""
        self._init_trained_schedule()
        sigma_grid_kind(self.config)  # validates the use_*_sigmas flags
        self._train_sigmas = self.schedule.sigmas().numpy()  # float64, finite also for zero terminal SNR
        T = len(self._train_sigmas)
        self._set_sigma_grid(np.arange(T - 1, -1, -1, dtype=np.float64), np.append(self._train_sigmas[::-1], 0.0))
        self.num_inference_steps = None

    def _set_sigma_grid(self, timesteps: np.ndarray, sigmas: np.ndarray, device: Any = None) -> None:
        ts, sig = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (timesteps, sigmas))
        self._set_levels(ts, sig, device)

    def _compute_sigma_schedule(self, num_inference_steps=None, timesteps=None, sigmas=None):
        """``(timesteps, sigmas)`` float64 arrays for this config (see ``core.grids.discrete_sigma_schedule``)."""
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


class DPM2Base(KarrasSigmaMixin, SchedulerMixin, ConfigMixin):
    """Config (the same arguments and defaults in Diffusers) and the two-call DPM2 step shared by KDPM2 and its
    ancestral variant; subclasses pick the step table."""

    _compatibles = KARRAS_COMPATIBLES
    order = 2
    _round_karras_timesteps = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._init_sigmas()
        self.set_timesteps(len(self.schedule))  # trained_betas may hold fewer levels than num_train_timesteps
        self.num_inference_steps = None

    def _midpoints(self, sig: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _step_table(self, sig: np.ndarray, mid: np.ndarray) -> list[tuple[float, float, float, float]]:
        raise NotImplementedError

    def set_timesteps(
        self, num_inference_steps=None, device=None, num_train_timesteps=None, timesteps=None, sigmas=None
    ):
        """Pick the grid (``num_inference_steps``, custom ``timesteps`` or ``sigmas``) and lay out the 2-stage calls."""
        two_stage_check(num_train_timesteps, self.config)
        ts, sig = self._compute_sigma_schedule(num_inference_steps, timesteps, sigmas)
        mid = self._midpoints(sig)
        t_mid = sigma_to_t(mid[:-1], np.log(self._train_sigmas))
        calls = np.concatenate([[ts[0]], np.stack([t_mid, ts[1:]], axis=1).reshape(-1)])
        self._set_sigma_grid(calls, interleave(sig[0], sig[1:], sig[-1]), device)
        self._steps = self._step_table(sig, mid)
        self.num_inference_steps = len(ts)
        self.sample = None

    def _input_sigma(self, i: int) -> float:
        sigma, mid = self._steps[i // 2][:2]
        return sigma if self.state_in_first_order else mid

    @property
    def state_in_first_order(self) -> bool:
        """True when the next call is the first of a step."""
        return self.sample is None

    def _stage(self, model_output, timestep, sample, generator=None):
        i = self._begin_step(model_output, timestep, sample)
        sigma, mid, sigma_to, sigma_up = self._steps[i // 2]
        first = self.state_in_first_order
        # 1. denoised estimate at the level the model was called at (sigma, or the midpoint)
        x0 = P.x0_from_ve(model_output, sample, sigma if first else mid, self.config.prediction_type)
        if first:  # 2a. Euler to the midpoint
            self.sample = sample
            prev = S.euler_step(sample, x0, sigma, mid)
        else:  # 2b. full step from the remembered start with the midpoint slope
            prev = self.sample + S.to_d(sample, x0, mid) * (sigma_to - sigma)
            self.sample = None
            if sigma_up > 0:
                prev = prev + noise_like(model_output, generator) * sigma_up
        if i + 1 == len(self._timestep_values):  # run over: no second stage pending
            self.sample = None
        self._step_index = i + 1
        return prev, x0
