"""DPMSolverMultistepScheduler: DPM-Solver / DPM-Solver++ multistep, ODE and SDE (Lu et al. 2022a, 2022b)."""

from __future__ import annotations

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import exponential_integrators as M
from ..utils.torch_utils import GeneratorArg
from .multistep_utils import TO_DPM, MultistepMixin, remap_legacy
from .scheduling_utils import KARRAS_COMPATIBLES, SchedulerMixin, SchedulerOutput

ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")


class DPMSolverMultistepScheduler(MultistepMixin, SchedulerMixin, ConfigMixin):
    """ "DPM++ 2M" (default), "DPM++ 3M" (``solver_order=3``), "DPM++ 2M SDE" (``algorithm_type="sde-dpmsolver++"``).

    Beyond Diffusers: ``final_sigmas_type="zero"`` also works with the noise-prediction algorithms; the SDE
    variants support ``solver_order=3`` (Diffusers' 3rd-order SDE update has a sign error, or is missing);
    ``set_timesteps(sigmas=...)`` accepts any grid.
    """

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
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        use_ode_tuned_sigmas: bool = False,  # ours, not Diffusers': last, so positions match theirs
    ):
        remap_legacy(self, TO_DPM, algorithm_type=ALGORITHMS, solver_type=("midpoint", "heun"))
        self._init_multistep()

    def _output_form(self) -> str:
        return "data" if self.config.algorithm_type.endswith("++") else "noise"

    def _order(self, i: int, n: int) -> int:
        """Diffusers' order rule: warm up from 1; first order at the end (``lower_order_final`` below 15 steps,
        ``euler_at_final``, or a final sigma of 0); second order just before it."""
        cfg = self.config
        short = cfg.lower_order_final and n < 15
        if (
            cfg.solver_order == 1
            or self.lower_order_nums < 1
            or i == n - 1
            and (cfg.euler_at_final or short or cfg.final_sigmas_type == "zero" or self.sigmas[-1] == 0)
        ):
            return 1
        if cfg.solver_order == 2 or self.lower_order_nums < 2 or (i == n - 2 and short):
            return 2
        return 3

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: GeneratorArg = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One multistep update from ``timestep`` to the next grid point; ``generator``/``variance_noise`` feed
        the SDE variants."""
        i = self._begin(model_output, timestep, sample)
        self._remember(self.convert_model_output(model_output, sample=sample))
        order = self._order(i, len(self._timestep_values))
        levels, outputs = self._history(order)
        sde = self.config.algorithm_type.startswith("sde")
        variant = "midpoint" if self.config.solver_type == "midpoint" else "exact"
        update = M.multistep(levels, self._levels[i + 1], order, self._output_form(), sde,
                             "dpmsolver_3m" if order == 3 else variant)  # fmt: skip
        noise = self._step_noise(model_output, generator, variance_noise) if sde else None
        prev = update.apply(sample, outputs, noise).to(model_output.dtype)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.config.solver_order)
        self._step_index = i + 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
