"""LMSDiscreteScheduler: linear multistep (Adams-Bashforth in sigma) on the probability-flow ODE ("LMS")."""

from __future__ import annotations

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from ..core import solvers as S
from .scheduling_utils import KARRAS_COMPATIBLES, SchedulerMixin
from .sigma_utils import KarrasSigmaMixin, SchedulerStepOutput


class LMSDiscreteSchedulerOutput(SchedulerStepOutput):
    """``prev_sample`` and ``pred_original_sample`` of one LMS step."""


class LMSDiscreteScheduler(KarrasSigmaMixin, SchedulerMixin, ConfigMixin):
    """Linear multistep sampler (k-diffusion ``sample_lms``): combines the last ``order`` ODE slopes with weights
    that integrate their Lagrange interpolant over the step (computed exactly, not by quadrature)."""

    _compatibles = KARRAS_COMPATIBLES
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
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
        self.derivatives: list[torch.Tensor] = []
        self.is_scale_input_called = False

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None) -> None:
        """Pick the grid (``num_inference_steps``, custom ``timesteps`` or ``sigmas``) and clear the history."""
        super().set_timesteps(num_inference_steps, device, timesteps, sigmas)
        self.derivatives = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """Weight of the slope ``current_order`` steps back for the step from ``sigmas[t]`` (Diffusers' API)."""
        return S.lms_coefficients(self._sig, t, order)[current_order]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        order: int = 4,
        return_dict: bool = True,
    ) -> LMSDiscreteSchedulerOutput | tuple:
        """One LMS step of up to ``order`` (1-4 in practice) past slopes; shapes ``(B, C, ...)``."""
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        i = self._begin_step(model_output, timestep, sample)
        sigma = self._sig[i]
        # 1. denoised estimate and ODE slope; keep the last `order` slopes
        x0 = P.x0_from_ve(model_output, sample, sigma, self.config.prediction_type)
        self.derivatives = (self.derivatives + [S.to_d(sample, x0, sigma)])[-order:]
        # 2. multistep combination of order min(i + 1, order), as Diffusers does: a run started part-way
        #    (image-to-image) has fewer stored slopes than that, and uses the leading weights of the full formula
        k = min(i + 1, order)
        coeffs = S.lms_coefficients(self._sig, i, k)
        prev = sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives)))
        self._step_index = i + 1
        if not return_dict:
            return prev, x0
        return LMSDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
