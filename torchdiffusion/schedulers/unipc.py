"""UniPCMultistepScheduler: unified predictor-corrector (Zhao et al. 2023, "UniPC")."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import exponential_integrators as M
from .multistep_utils import TO_UNIPC, MultistepMixin, remap_legacy
from .scheduling_utils import KARRAS_COMPATIBLES, SchedulerMixin, SchedulerOutput


class UniPCMultistepScheduler(MultistepMixin, SchedulerMixin, ConfigMixin):
    """ "UniPC": each step first corrects the previous prediction with the new model output (UniC, no extra model
    call), then predicts the next sample (UniP, or the ``solver_p`` scheduler when given).

    Beyond Diffusers: ``solver_type="bh1"`` and ``predict_x0=False`` give finite samples (Diffusers returns NaN at
    the final step to sigma = 0, which is taken at first order here); ``set_timesteps(sigmas=...)`` accepts any
    grid, also without ``use_flow_sigmas``.
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    _style = "unipc"
    ignore_for_config = ["solver_p"]  # an object; the config records it as None (Diffusers writes null)

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
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] = [],  # noqa: B006 - Diffusers' default, never mutated
        solver_p: SchedulerMixin | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
        use_ode_tuned_sigmas: bool = False,  # ours, not Diffusers': last, so positions match theirs
    ):
        remap_legacy(self, TO_UNIPC, solver_type=M.UNIPC_VARIANTS)
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError("shift_terminal is only supported with use_flow_sigmas=True")
        self.solver_p = solver_p
        self.register_to_config(solver_p=None)
        self.disable_corrector = list(disable_corrector or [])
        self.predict_x0 = predict_x0
        self._init_multistep()

    def _output_form(self) -> str:
        return "data" if self.config.predict_x0 else "noise"

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, sigmas: Any = None,
                      mu: float | None = None, timesteps: Any = None) -> None:  # fmt: skip
        """Choose the grid (``num_inference_steps``, custom ``sigmas`` or ``timesteps``); resets the history."""
        super().set_timesteps(num_inference_steps, device, mu=mu, timesteps=timesteps, sigmas=sigmas)
        self.last_sample, self.this_order = None, 0
        if self.solver_p is not None:
            self.solver_p.set_timesteps(self.num_inference_steps, device=device)

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple:
        """Correct ``sample`` with ``model_output`` (UniC), then predict the sample at the next timestep (UniP)."""
        i = self._begin(model_output, timestep, sample)
        converted = self.convert_model_output(model_output, sample=sample)
        form, variant = self._output_form(), self.config.solver_type
        if i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None:
            levels = [self._levels[i - 1 - j] for j in range(self.this_order)]
            outputs = [self.model_outputs[-1 - j] for j in range(self.this_order)]
            corr = M.unipc_step(levels, self._levels[i], self.this_order, form, variant, corrector=True)
            sample = corr.apply(self.last_sample, [converted] + outputs).to(sample.dtype)
        self._remember(converted)
        n, order = len(self._timestep_values), self.config.solver_order
        order = min(order, n - i) if self.config.lower_order_final else order
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        if self.solver_p is not None:
            prev = self.solver_p.step(model_output, self.timesteps[i], sample).prev_sample
        else:
            levels, outputs = self._history(self.this_order)
            prev = M.unipc_step(levels, self._levels[i + 1], self.this_order, form, variant).apply(sample, outputs)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.config.solver_order)
        self._step_index = i + 1
        prev = prev.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
