"""DDIMScheduler: the deterministic (``eta = 0``) or partly stochastic sampler of Song et al. 2021."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from ..core import solvers as S
from ..utils.outputs import BaseOutput
from ..utils.torch_utils import GeneratorArg
from .scheduling_utils import KARRAS_COMPATIBLES, AlphaBarSchedulerMixin, SchedulerMixin, noise_like


@dataclass
class DDIMSchedulerOutput(BaseOutput):
    """``prev_sample`` ``(B, C, ...)``: x at the previous timestep; ``pred_original_sample``: the x0 estimate."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class DDIMScheduler(AlphaBarSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Denoising diffusion implicit models, eq. 12, with Diffusers' arguments and defaults.

    Each step goes to the *next timestep of the grid* (also for ``linspace``/``trailing`` grids and custom
    ``timesteps``). Diffusers instead always subtracts ``num_train_timesteps // num_inference_steps``, which lands
    between grid points when that ratio is not an integer; for ``leading`` grids (the default) and for
    ``trailing`` grids with ``num_train_timesteps % num_inference_steps == 0`` both agree.
    ``set_alpha_to_one``: the final step goes to ``alpha_bar = 1`` (else to ``alpha_bar_0``).
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
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._init_schedule(set_alpha_to_one)

    def _prev_timestep(self, t: int) -> int:
        i = self._grid_position(t)
        if i is None:  # off-grid timestep: Diffusers' fixed stride
            return t - len(self.schedule) // self.num_inference_steps
        return self._grid[i + 1] if i + 1 < len(self._grid) else -1

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: GeneratorArg = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """One DDIM step from ``timestep`` to the next grid timestep; ``eta`` scales the added noise (0: none,
        1: DDPM-like). ``variance_noise`` (shaped like ``sample``) replaces drawing from ``generator``."""
        t = self._begin_grid_step(model_output, timestep, sample)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
            raise ValueError(f"eta must be a number >= 0, got {eta!r}")
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        if variance_noise is not None and tuple(variance_noise.shape) != tuple(sample.shape):
            raise ValueError(f"variance_noise shape {tuple(variance_noise.shape)} must equal sample shape")
        s = self._prev_timestep(t)

        # 1. noise levels at t and at the previous timestep s
        ab_t = self.schedule.alpha_bar(t)
        ab_s = self.schedule.alpha_bar(s, final=self._final_ab)
        a_t, sig_t = ab_t**0.5, (1 - ab_t) ** 0.5
        # 2. x0 and eps estimates; clipping x0 optionally re-derives eps from the clipped x0
        x0, eps = P.to_x0_eps(model_output, sample, a_t, sig_t, self.config.prediction_type)
        x0 = P.process_x0(x0, self.config)
        if use_clipped_model_output:
            eps = P.eps_from_x0(x0, sample, a_t, sig_t)
        # 3. DDIM update with sigma_t(eta) noise
        std = S.ddim_std(ab_t, ab_s, eta)
        if eta > 0 and variance_noise is None:
            variance_noise = noise_like(model_output, generator)
        prev = S.ddim_step(x0, eps, ab_s, std, variance_noise if eta > 0 else None)
        if not return_dict:
            return prev, x0
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
