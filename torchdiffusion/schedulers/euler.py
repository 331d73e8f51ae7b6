"""EulerDiscreteScheduler: Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2)."""

from __future__ import annotations

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from ..core import solvers as S
from ..core.schedules import check_choice
from ..utils.torch_utils import GeneratorArg
from .scheduling_utils import KARRAS_COMPATIBLES, SchedulerMixin
from .sigma_utils import KarrasSigmaMixin, SchedulerStepOutput


class EulerDiscreteSchedulerOutput(SchedulerStepOutput):
    """``prev_sample`` and ``pred_original_sample`` of one Euler step."""


class EulerDiscreteScheduler(KarrasSigmaMixin, SchedulerMixin, ConfigMixin):
    """Euler sampler ("Euler" in A1111/ComfyUI), with optional stochastic churn (``s_churn`` in ``step``).

    ``timestep_type="continuous"`` with ``v_prediction`` feeds the model ``log(sigma) / 4`` as its timestep
    (EDM-style models); ``interpolation_type="log_linear"`` spaces sigmas log-uniformly.
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
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        check_choice("interpolation_type", interpolation_type, ("linear", "log_linear"))
        check_choice("timestep_type", timestep_type, ("discrete", "continuous"))
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        self._init_sigmas()
        self._continuous_t()
        self.is_scale_input_called = False

    def _continuous_t(self) -> None:
        if self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction":
            self.timesteps = P.edm_c_noise(self.sigmas[:-1].clamp(min=1e-20)).to(self.timesteps.device)
            self._reset_steps()

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None) -> None:
        """Pick the grid: ``num_inference_steps``, custom ``timesteps`` or custom ``sigmas`` (ending with the last)."""
        if timesteps is not None and self.config.timestep_type == "continuous":
            raise ValueError("timesteps cannot be set with timestep_type='continuous'; pass sigmas instead")
        super().set_timesteps(num_inference_steps, device, timesteps, sigmas)
        self._continuous_t()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: GeneratorArg = None,
        return_dict: bool = True,
    ) -> EulerDiscreteSchedulerOutput | tuple:
        """One Euler step ``x + (x - x0) / sigma_hat * (sigma_next - sigma_hat)``; shapes ``(B, C, ...)``."""
        i = self._begin_step(model_output, timestep, sample)
        x = sample.to(torch.float32)
        sigma, sigma_next = self._sig[i], self._sig[i + 1]
        # 1. churn: raise the noise level to sigma_hat by adding fresh noise (off by default)
        x, sigma_hat = self._churn(x, model_output, sigma, (s_churn, s_tmin, s_tmax, s_noise), generator)
        # 2. denoised estimate, 3. Euler step to the next noise level
        x0 = P.x0_from_ve(model_output, x, sigma_hat, self.config.prediction_type, sigma_v=sigma)
        prev = S.euler_step(x, x0, sigma_hat, sigma_next).to(model_output.dtype)
        self._step_index = i + 1
        if not return_dict:
            return prev, x0
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
