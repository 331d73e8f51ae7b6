"""EDMEulerScheduler: Euler sampling of an EDM-preconditioned model (Karras et al. 2022)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from ..core import solvers as S
from ..core.grids import check_custom_sigmas, check_num_inference_steps, exponential_sigmas, karras_sigmas
from ..core.schedules import check_choice
from ..utils.torch_utils import GeneratorArg
from .scheduling_utils import SchedulerMixin
from .sigma_utils import SchedulerStepOutput, SigmaStepMixin


class EDMEulerSchedulerOutput(SchedulerStepOutput):
    """``prev_sample`` and ``pred_original_sample`` (the preconditioned denoiser output) of one step."""


def check_edm_config(config) -> None:
    """Validate the EDM keys shared with ``EDMDPMSolverMultistepScheduler``; errors name the key."""
    check_choice("sigma_schedule", config.sigma_schedule, ("karras", "exponential"))
    check_choice("prediction_type", config.prediction_type, ("epsilon", "v_prediction"))
    check_choice("final_sigmas_type", config.final_sigmas_type, ("zero", "sigma_min"))
    lo, hi = config.sigma_min, config.sigma_max
    if not 0 < lo < hi:
        raise ValueError(f"sigma_min={lo!r} and sigma_max={hi!r} must satisfy 0 < sigma_min < sigma_max")


class EDMEulerScheduler(SigmaStepMixin, SchedulerMixin, ConfigMixin):
    """Euler sampler over a continuous EDM noise range ``[sigma_min, sigma_max]`` spaced by ``sigma_schedule``.

    The model gets ``c_in x`` (``scale_model_input``) and timestep ``c_noise = log(sigma) / 4``; its output is
    turned into the denoised sample by ``core.prediction.edm_denoise``. ``set_timesteps(sigmas=...)`` takes
    noise levels (Diffusers treats them as positions on the ramp, contrary to its documentation).
    """

    _compatibles: list[str] = []
    _integer_timestep_is_index = True  # as in Diffusers: step(out, 999, x) is refused
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
        final_sigmas_type: str = "zero",
    ):
        check_edm_config(self.config)
        self.num_inference_steps = None
        self._set(self._grid(num_train_timesteps + 1), None)
        self.is_scale_input_called = False

    def _grid(self, n: int) -> np.ndarray:
        c = self.config
        if c.sigma_schedule == "karras":
            return karras_sigmas(c.sigma_min, c.sigma_max, n, c.rho)
        return exponential_sigmas(c.sigma_min, c.sigma_max, n)

    def _set(self, sigmas: np.ndarray, device: Any, final: float | None = None) -> None:
        s = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
        if final is None:
            final = float(s[-1]) if self.config.final_sigmas_type == "sigma_min" else 0.0
        self._set_levels(P.edm_c_noise(s), torch.cat([s, torch.tensor([final], dtype=torch.float32)]), device)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas: Any = None) -> None:
        """Either ``num_inference_steps`` levels of the configured grid, or custom ``sigmas`` (descending, > 0)."""
        if (num_inference_steps is None) == (sigmas is None):
            raise ValueError("pass exactly one of num_inference_steps or sigmas")
        if sigmas is not None:
            s = check_custom_sigmas(np.atleast_1d(np.asarray(sigmas, dtype=np.float64)).tolist() + [0.0])[:-1]
            if (s <= 0).any():
                raise ValueError(f"sigmas must be > 0 (the final 0 is appended), got {s.tolist()}")
        else:
            s = self._grid(check_num_inference_steps(num_inference_steps))
        self.num_inference_steps = len(s)
        self._set(s, device)

    @property
    def init_noise_sigma(self) -> float:
        """``sqrt(sigma_max^2 + 1)``."""
        return (self.config.sigma_max**2 + 1) ** 0.5

    def precondition_inputs(self, sample: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``c_in(sigma) * sample``."""
        return sample * P.edm_c_in(sigma, self.config.sigma_data)

    def precondition_noise(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """``c_noise(sigma) = log(sigma) / 4``."""
        return P.edm_c_noise(torch.as_tensor(sigma, dtype=torch.float32).reshape(-1))

    def precondition_outputs(self, sample: torch.Tensor, model_output: torch.Tensor, sigma) -> torch.Tensor:
        """The denoised sample ``c_skip x + c_out F(x)``."""
        return P.edm_denoise(sample, model_output, sigma, self.config.sigma_data, self.config.prediction_type)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        """``c_in(sigma) * sample`` for the current step."""
        self.is_scale_input_called = True
        return self.precondition_inputs(sample, self._sig[self._index_for_step(timestep)])

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
        pred_original_sample: torch.Tensor | None = None,
    ) -> EDMEulerSchedulerOutput | tuple:
        """One (optionally churned) Euler step; ``pred_original_sample`` overrides the denoiser output."""
        i = self._begin_step(model_output, timestep, sample)
        x = sample.to(torch.float32)
        sigma, sigma_next = self._sig[i], self._sig[i + 1]
        x, sigma_hat = self._churn(x, model_output, sigma, (s_churn, s_tmin, s_tmax, s_noise), generator)
        x0 = pred_original_sample
        if x0 is None:
            x0 = self.precondition_outputs(x, model_output, sigma_hat)
        prev = S.euler_step(x, x0, sigma_hat, sigma_next).to(model_output.dtype)
        self._step_index = i + 1
        if not return_dict:
            return prev, x0
        return EDMEulerSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
