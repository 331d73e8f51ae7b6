"""DEISMultistepScheduler: diffusion exponential integrator sampler, log-rho multistep (Zhang & Chen 2023)."""

from __future__ import annotations

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import exponential_integrators as M
from .multistep_utils import TO_DEIS, MultistepMixin, remap_legacy
from .scheduling_utils import KARRAS_COMPATIBLES, SchedulerMixin, SchedulerOutput


class DEISMultistepScheduler(MultistepMixin, SchedulerMixin, ConfigMixin):
    """ "DEIS" in ComfyUI: the noise estimate is the Lagrange polynomial through the last ``solver_order`` outputs
    in ``log rho`` (``rho = sigma / alpha``), integrated exactly. Sampling ends at the smallest noise level of the
    grid (as in Diffusers), not at 0."""

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    _style = "deis"
    _form = "noise"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        use_ode_tuned_sigmas: bool = False,  # ours, not Diffusers': last, so positions match theirs
    ):
        remap_legacy(self, TO_DEIS, algorithm_type=("deis",), solver_type=("logrho",))
        self._init_multistep()

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor = None, **kwargs):
        """The noise estimate, always re-derived from the (thresholded) x0 estimate, as Diffusers does."""
        sample = args[-1] if sample is None and args else sample
        x0 = self._as_x0(model_output, sample)
        alpha, sigma = self._levels[self.step_index]
        return (sample - alpha * x0) / sigma

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple:
        """One DEIS update from ``timestep`` to the next grid point."""
        i = self._begin(model_output, timestep, sample)
        self._remember(self.convert_model_output(model_output, sample=sample))
        n, cfg = len(self._timestep_values), self.config
        order = min(cfg.solver_order, self.lower_order_nums + 1)
        if cfg.lower_order_final and n < 15 and i >= n - 2:  # first order last, at most second order before it
            order = min(order, n - i)
        levels, outputs = self._history(order)
        prev = M.multistep(levels, self._levels[i + 1], order, "noise").apply(sample, outputs).to(sample.dtype)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index = i + 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
