"""DPMSolverSinglestepScheduler: single-step DPM-Solver(++) of order 1-3 (Lu et al. 2022a, Algorithms 1-2)."""

from __future__ import annotations

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import exponential_integrators as M
from ..utils.torch_utils import GeneratorArg
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .multistep_utils import TO_DPM, MultistepMixin, remap_legacy
from .scheduling_utils import KARRAS_COMPATIBLES, SchedulerMixin, SchedulerOutput


def singlestep_orders(steps: int, order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """The order of each step: repeated groups ``1, ..., order`` (a group is one higher-order update whose
    intermediate points are grid points); with ``lower_order_final`` the last group is cut short so the run ends
    at order 1 (order 2 then 1 for a remainder of 2)."""
    groups = list(range(1, order + 1))
    if not lower_order_final or order == 1:
        orders = groups * (steps // order)
    elif steps % order == 0:
        orders = groups * (steps // order - 1) + list(range(1, order)) + [1]
    else:
        orders = groups * (steps // order) + list(range(1, steps % order + 1))
    if final_zero and orders:
        orders[-1] = 1
    return orders


class DPMSolverSinglestepScheduler(MultistepMixin, SchedulerMixin, ConfigMixin):
    """ "DPM2"/"DPM++ 2S"-style single-step DPM-Solver: ``solver_order`` grid points form one update.

    Unlike Diffusers, ``set_timesteps`` does not rewrite ``config.lower_order_final``: the effective value (on when
    the step count is not a multiple of the order, or the grid ends at sigma = 0) is used for that run only.
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    _style = "singlestep"

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
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        use_ode_tuned_sigmas: bool = False,  # ours, not Diffusers': last, so positions match theirs
    ):
        algorithms = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")
        remap_legacy(self, TO_DPM, algorithm_type=algorithms, solver_type=("midpoint", "heun"))
        self._init_multistep()
        self.sample, self.order_list = None, []

    _output_form = DPMSolverMultistepScheduler._output_form  # "++" algorithms work on x0, the others on eps

    def set_timesteps(self, num_inference_steps=None, device=None, mu=None, timesteps=None, sigmas=None) -> None:
        """Choose the grid (``num_inference_steps``, custom ``timesteps`` or ``sigmas``) and the order of each step."""
        super().set_timesteps(num_inference_steps, device, mu=mu, timesteps=timesteps, sigmas=sigmas)
        cfg, n = self.config, self.num_inference_steps
        final_zero = float(self.sigmas[-1]) == 0.0
        lof = cfg.lower_order_final or n % cfg.solver_order != 0 or final_zero
        self.order_list = singlestep_orders(n, cfg.solver_order, lof, final_zero)
        self.sample = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: GeneratorArg = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One step; a step of order ``k`` updates the sample from ``k - 1`` grid points back with ``k`` outputs."""
        i = self._begin(model_output, timestep, sample)
        self._remember(self.convert_model_output(model_output, sample=sample))
        order = self.order_list[i]
        while self.model_outputs[-order] is None:
            order -= 1
        if order == 1:
            self.sample = sample
        sde = self.config.algorithm_type.startswith("sde")
        base = self._levels[i - order + 1]
        if order == 3 and self.config.solver_type == "midpoint":  # DPM-Solver-3: slope from the last point only
            nodes, outputs = [base, self._levels[i]], [self.model_outputs[-3], self.model_outputs[-1]]
        else:
            nodes = [self._levels[i - order + 1 + j] for j in range(order)]
            outputs = [self.model_outputs[-order + j] for j in range(order)]
        variant = "midpoint" if self.config.solver_type == "midpoint" and order == 2 else "exact"
        update = M.exponential_step(base, self._levels[i + 1], nodes, self._output_form(), sde, variant)
        noise = self._step_noise(model_output, generator, None) if sde else None
        prev = update.apply(self.sample, outputs, noise).to(model_output.dtype)
        self._step_index = i + 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
