"""EulerAncestralDiscreteScheduler: Euler steps with fresh noise each step ("Euler a")."""

from __future__ import annotations

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from ..core import solvers as S
from ..utils.torch_utils import GeneratorArg
from .scheduling_utils import KARRAS_COMPATIBLES, SchedulerMixin, noise_like
from .sigma_utils import KarrasSigmaMixin, SchedulerStepOutput


class EulerAncestralDiscreteSchedulerOutput(SchedulerStepOutput):
    """``prev_sample`` and ``pred_original_sample`` of one ancestral Euler step."""


class EulerAncestralDiscreteScheduler(KarrasSigmaMixin, SchedulerMixin, ConfigMixin):
    """Ancestral Euler sampler (k-diffusion ``sample_euler_ancestral``): an Euler step down to ``sigma_down``,
    then noise ``sigma_up`` back up to the next level. Stochastic: pass ``generator`` for reproducible samples.

    Beyond Diffusers: ``prediction_type="sample"`` and custom ``timesteps``/``sigmas`` in ``set_timesteps``.
    """

    _compatibles = KARRAS_COMPATIBLES
    _integer_timestep_is_index = True  # as in Diffusers: step(out, 999, x) is refused
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._init_sigmas()
        self.is_scale_input_called = False

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: GeneratorArg = None,
        return_dict: bool = True,
    ) -> EulerAncestralDiscreteSchedulerOutput | tuple:
        """One ancestral step; shapes ``(B, C, ...)``. The noise is drawn with ``generator``."""
        i = self._begin_step(model_output, timestep, sample)
        x = sample.to(torch.float32)
        sigma, sigma_next = self._sig[i], self._sig[i + 1]
        # 1. denoised estimate; 2. split the step into a deterministic and a noise part
        x0 = P.x0_from_ve(model_output, x, sigma, self.config.prediction_type)
        sigma_down, sigma_up = S.ancestral_sigmas(sigma, sigma_next)
        # 3. Euler step down to sigma_down, 4. fresh noise of size sigma_up
        prev = S.euler_step(x, x0, sigma, sigma_down)
        prev = (prev + noise_like(model_output, generator) * sigma_up).to(model_output.dtype)
        self._step_index = i + 1
        if not return_dict:
            return prev, x0
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
