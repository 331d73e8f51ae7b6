"""KDPM2DiscreteScheduler: k-diffusion's DPM-Solver-2 (``sample_dpm_2``), a midpoint method in log sigma."""

from __future__ import annotations

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from ..core import solvers as S
from ..core.spacing import sigma_to_t
from ..utils.torch_utils import randn_tensor
from .scheduling_utils import KARRAS_COMPATIBLES, SchedulerMixin
from .sigma_utils import KarrasSigmaMixin, SchedulerStepOutput, interleave, two_stage_check


class KDPM2DiscreteSchedulerOutput(SchedulerStepOutput):
    """``prev_sample`` and ``pred_original_sample`` of one KDPM2 stage."""


class DPM2Base(KarrasSigmaMixin, SchedulerMixin, ConfigMixin):
    """The two-call DPM2 step shared by KDPM2 and its ancestral variant; subclasses pick the step table."""

    _compatibles = KARRAS_COMPATIBLES
    order = 2
    _round_karras_timesteps = True

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
                prev = prev + self._noise(model_output, generator) * sigma_up
        if i + 1 == len(self._timestep_values):  # run over: no second stage pending
            self.sample = None
        self._step_index = i + 1
        return prev, x0

    def _noise(self, model_output: torch.Tensor, generator) -> torch.Tensor:
        return randn_tensor(
            model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
        )


class KDPM2DiscreteScheduler(DPM2Base):
    """DPM2 sampler ("DPM2" in A1111): Euler to the geometric midpoint ``sqrt(sigma_i sigma_{i+1})``, evaluate
    there, and take the full step with the midpoint slope. ``n`` steps take ``2n - 1`` model calls."""

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
        self.set_timesteps(num_train_timesteps)
        self.num_inference_steps = None

    def _midpoints(self, sig: np.ndarray) -> np.ndarray:
        """Per step k: the noise level the second model call is made at."""
        return np.sqrt(sig[:-1] * sig[1:])

    def _step_table(self, sig: np.ndarray, mid: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Per step k: (sigma, sigma_mid, sigma_to, sigma_noise); the last step is Euler to 0."""
        mid = mid.copy()
        mid[-1] = 0.0
        return [(float(sig[k]), float(mid[k]), float(sig[k + 1]), 0.0) for k in range(len(sig) - 1)]

    def step(
        self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> KDPM2DiscreteSchedulerOutput | tuple:
        """One stage of a DPM2 step; shapes ``(B, C, ...)``."""
        prev, x0 = self._stage(model_output, timestep, sample)
        return (
            (prev, x0) if not return_dict else KDPM2DiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
        )
