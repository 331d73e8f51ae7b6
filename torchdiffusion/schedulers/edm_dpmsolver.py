"""EDMDPMSolverMultistepScheduler: DPM-Solver++ multistep for EDM-preconditioned models (Karras et al. 2022)."""

from __future__ import annotations

from typing import Any

import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .edm_euler import EDMEulerScheduler, check_edm_config
from .multistep_utils import TO_DPM, MultistepMixin, remap_legacy
from .scheduling_utils import SchedulerMixin, check_noise


class EDMDPMSolverMultistepScheduler(MultistepMixin, SchedulerMixin, ConfigMixin):
    """DPM-Solver++ (2M/3M, ODE or SDE) in variance-exploding form ``x = x0 + sigma eps`` over an EDM noise range.

    The EDM preconditioning and grids are :class:`EDMEulerScheduler`'s, the update rule is
    :class:`DPMSolverMultistepScheduler`'s (with ``alpha = 1``). Beyond Diffusers: ``sde-dpmsolver++`` with
    ``solver_order=3`` works (Diffusers raises), and ``set_timesteps(sigmas=...)`` takes custom noise levels.
    """

    _compatibles: list[str] = []
    order = 1

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: str = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        rho: float = 7.0,
        solver_order: int = 2,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
    ):
        remap_legacy(self, TO_DPM, algorithm_type=("dpmsolver++", "sde-dpmsolver++"), solver_type=("midpoint", "heun"))
        check_edm_config(self.config)
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}")
        self._set(self._grid(num_train_timesteps), None)
        self.num_inference_steps = None

    # EDM preconditioning and grids: shared with EDMEulerScheduler
    _grid = EDMEulerScheduler._grid
    init_noise_sigma = EDMEulerScheduler.init_noise_sigma
    precondition_inputs = EDMEulerScheduler.precondition_inputs
    precondition_noise = EDMEulerScheduler.precondition_noise
    precondition_outputs = EDMEulerScheduler.precondition_outputs
    scale_model_input = EDMEulerScheduler.scale_model_input
    _set_levels = EDMEulerScheduler._set_levels
    # the DPM-Solver++ update and its order rule: shared with DPMSolverMultistepScheduler
    step = DPMSolverMultistepScheduler.step
    _order = DPMSolverMultistepScheduler._order
    _output_form = DPMSolverMultistepScheduler._output_form

    def _set(self, sigmas: Any, device: Any, final: float | None = None) -> None:
        EDMEulerScheduler._set(self, sigmas, device, final)
        self._levels = [(1.0, s) for s in self._sig]
        self.model_outputs, self.lower_order_nums = [None] * self.config.solver_order, 0

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, sigmas: Any = None) -> None:
        """``num_inference_steps`` levels of the configured grid, or custom ``sigmas`` (descending, > 0)."""
        EDMEulerScheduler.set_timesteps(self, num_inference_steps, device, sigmas)

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The denoised sample ``D(x) = c_skip x + c_out F(x)`` at the current noise level (thresholded if set)."""
        x0 = self.precondition_outputs(sample, model_output, self._sig[self.step_index])
        return P.process_x0(x0, self.config)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """``x0 + sigma eps`` with the noise level of each sample's timestep (a value of ``timesteps``)."""
        check_noise(noise, original_samples)
        idx = self._indices_for(timesteps, original_samples.shape[0])
        sigma = torch.tensor([self._sig[i] for i in idx], dtype=torch.float64)
        return P.add_noise(original_samples, noise, torch.ones_like(sigma), sigma)
