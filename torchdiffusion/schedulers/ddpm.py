"""DDPMScheduler: ancestral sampling of Ho et al. 2020 over any (strided) timestep grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from ..core import solvers as S
from ..utils.outputs import BaseOutput
from ..utils.torch_utils import GeneratorArg
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    AlphaBarSchedulerMixin,
    PreviousTimestepMixin,
    SchedulerMixin,
    noise_like,
    timestep_to_int,
)


@dataclass
class DDPMSchedulerOutput(BaseOutput):
    """``prev_sample`` ``(B, C, ...)``: x at the previous timestep; ``pred_original_sample``: the x0 estimate."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class DDPMScheduler(PreviousTimestepMixin, AlphaBarSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Denoising diffusion probabilistic models: ``x_s ~ q(x_s | x_t, x0_hat)``, the posterior of eq. 7.

    Arguments and defaults are Diffusers'. Without ``set_timesteps`` it walks every training step
    (``T-1 .. 0``); with it, the chosen grid. Noise comes from ``generator`` through ``randn_tensor``, so a seed
    gives the same samples as Diffusers on the CPU. Unlike Diffusers, no noise is added on the final step
    (paper, Algorithm 2) and ``fixed_large_log`` gives ``fixed_large``'s noise instead of NaN.
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
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._init_schedule()
        self.variance_type = variance_type

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: GeneratorArg = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple:
        """One ancestral step from ``timestep`` to the next grid timestep. Shapes ``(B, C, ...)`` (``model_output``
        may have ``2C`` channels for the learned variance types)."""
        learned = self.variance_type in ("learned", "learned_range")
        P.check_same_shape(model_output, sample, channels_factor=2 if learned else 1)
        t = timestep_to_int(timestep)
        self._check_timestep(t)
        s = self.previous_timestep(t)
        predicted_variance = None
        if model_output.shape[1] != sample.shape[1]:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        # 1. noise levels: alpha_bar at t and at the previous timestep s (1 after the last step), as float32
        #    0-d tensors: Diffusers computes the step's coefficients in float32, and a 1000-step loop shows it
        ab_t = self.alphas_cumprod[t]
        ab_s = self.alphas_cumprod[s] if s >= 0 else self.one
        # 2. x0 estimate from the model output, then clipping / thresholding
        x0, _ = P.to_x0_eps(model_output, sample, ab_t**0.5, (1 - ab_t) ** 0.5, self.config.prediction_type)
        x0 = P.process_x0(x0, self.config)
        # 3. posterior mean of q(x_s | x_t, x0)
        prev = S.ddpm_posterior_mean(x0, sample, ab_t, ab_s)
        # 4. add noise, except on the final step
        if t > 0 and s >= 0:
            std = S.ddpm_std(self.variance_type, ab_t, ab_s, predicted_variance)
            prev = prev + std * noise_like(model_output, generator)
        if not return_dict:
            return prev, x0
        return DDPMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
