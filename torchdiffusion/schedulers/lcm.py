"""LCMScheduler: multistep sampling of latent consistency models (Luo et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import prediction as P
from ..core import solvers as S
from ..utils.outputs import BaseOutput
from ..utils.torch_utils import GeneratorArg
from .consistency_utils import ConsistencyBase
from .scheduling_utils import noise_like


@dataclass
class LCMSchedulerOutput(BaseOutput):
    """``prev_sample`` for the next call and ``denoised`` (the consistency function's x0) ``(B, C, ...)``."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor | None = None


class LCMScheduler(ConsistencyBase):
    """Each step maps ``x_t`` to the consistency function's ``x0`` (``c_skip x + c_out x0_hat``) and re-noises it
    to the next timestep; the last step returns the denoised sample ("LCM" in A1111/ComfyUI). Arguments and
    defaults (the config): see :class:`~torchdiffusion.schedulers.consistency_utils.ConsistencyBase`."""

    def get_scalings_for_boundary_condition_discrete(self, timestep: int) -> tuple[float, float]:
        """``(c_skip, c_out)`` at ``timestep`` (``sigma_data = 0.5``)."""
        return S.consistency_scalings(float(timestep), self.config.timestep_scaling)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: GeneratorArg = None,
        return_dict: bool = True,
    ) -> LCMSchedulerOutput | tuple:
        """One LCM step; noise for the re-noising comes from ``generator``."""
        i, t, nxt = self._current(model_output, timestep, sample)
        ab_t = self.schedule.alpha_bar(t)
        ab_prev = self.schedule.alpha_bar(nxt if nxt >= 0 else t, self._final_ab)
        # 1. x0 estimate (clipped/thresholded), 2. consistency function with boundary scalings
        x0, _ = P.to_x0_eps(model_output, sample, ab_t**0.5, (1 - ab_t) ** 0.5, self.config.prediction_type)
        x0 = P.process_x0(x0, self.config)
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(t)
        denoised = c_out * x0 + c_skip * sample
        # 3. re-noise to the next timestep, except after the last
        prev = denoised
        if i != len(self._grid) - 1:
            noise = noise_like(model_output, generator, denoised.dtype)
            prev = ab_prev**0.5 * denoised + (1 - ab_prev) ** 0.5 * noise
        self._step_index = i + 1
        return LCMSchedulerOutput(prev_sample=prev, denoised=denoised) if return_dict else (prev, denoised)
