"""HeunDiscreteScheduler: Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1)."""

from __future__ import annotations

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from ..core import solvers as S
from .scheduling_utils import KARRAS_COMPATIBLES, SchedulerMixin
from .sigma_utils import KarrasSigmaMixin, SchedulerStepOutput, interleave, two_stage_check


class HeunDiscreteSchedulerOutput(SchedulerStepOutput):
    """``prev_sample`` and ``pred_original_sample`` of one Heun stage."""


class HeunDiscreteScheduler(KarrasSigmaMixin, SchedulerMixin, ConfigMixin):
    """Heun sampler: an Euler predictor to the next sigma, then a trapezoidal corrector with a second model call.

    ``timesteps`` lists every model call: ``n`` steps take ``2n - 1`` calls (the last step is plain Euler to 0).
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 2

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._init_sigmas()
        self.set_timesteps(len(self.schedule))  # trained_betas may hold fewer levels than num_train_timesteps
        self.num_inference_steps = None

    def set_timesteps(
        self, num_inference_steps=None, device=None, num_train_timesteps=None, timesteps=None, sigmas=None
    ):
        """Pick the grid (``num_inference_steps``, custom ``timesteps`` or ``sigmas``) and lay out the 2-stage calls."""
        two_stage_check(num_train_timesteps, self.config)
        ts, sig = self._compute_sigma_schedule(num_inference_steps, timesteps, sigmas)
        self._set_sigma_grid(interleave(ts[0], ts[1:]), interleave(sig[0], sig[1:-1], sig[-1]), device)
        self.num_inference_steps = len(ts)
        self.prev_derivative = self.dt = self.sample = None

    @property
    def state_in_first_order(self) -> bool:
        """True when the next call is a predictor (first-stage) call."""
        return self.dt is None

    def step(
        self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> HeunDiscreteSchedulerOutput | tuple:
        """One stage: predictor (Euler to the next sigma) or corrector (average of the two slopes)."""
        i = self._begin_step(model_output, timestep, sample)
        first = self.state_in_first_order
        sigma, sigma_next = (self._sig[i], self._sig[i + 1]) if first else (self._sig[i - 1], self._sig[i])
        # 1. denoised estimate at the noise level the model was called at
        x0 = P.x0_from_ve(model_output, sample, sigma if first else sigma_next, self.config.prediction_type)
        x0 = P.process_x0(
            x0, {"clip_sample": self.config.clip_sample, "clip_sample_range": self.config.clip_sample_range}
        )
        if first:  # 2a. predictor: remember slope, step size and start point
            d = S.to_d(sample, x0, sigma)
            self.prev_derivative, self.dt, self.sample = d, sigma_next - sigma, sample
            base = sample
        else:  # 2b. corrector: trapezoid of the two slopes from the remembered start point
            d = (self.prev_derivative + S.to_d(sample, x0, sigma_next)) / 2
            base = self.sample
        prev = base + d * self.dt
        if not first or i + 1 == len(self._timestep_values):  # step done (or run over): back to the predictor
            self.prev_derivative = self.dt = self.sample = None
        self._step_index = i + 1
        if not return_dict:
            return prev, x0
        return HeunDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
