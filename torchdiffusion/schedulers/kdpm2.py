"""KDPM2DiscreteScheduler: k-diffusion's DPM-Solver-2 (``sample_dpm_2``), a midpoint method in log sigma."""

from __future__ import annotations

import numpy as np
import torch

from .sigma_utils import DPM2Base, SchedulerStepOutput


class KDPM2DiscreteSchedulerOutput(SchedulerStepOutput):
    """``prev_sample`` and ``pred_original_sample`` of one KDPM2 stage."""


class KDPM2DiscreteScheduler(DPM2Base):
    """DPM2 sampler ("DPM2" in A1111): Euler to the geometric midpoint ``sqrt(sigma_i sigma_{i+1})``, evaluate
    there, and take the full step with the midpoint slope. ``n`` steps take ``2n - 1`` model calls. Arguments
    and defaults (the config): see :class:`~torchdiffusion.schedulers.sigma_utils.DPM2Base`."""

    def _midpoints(self, sig: np.ndarray) -> np.ndarray:
        """Per step k: the noise level the second model call is made at."""
        return np.sqrt(sig[:-1] * sig[1:])

    def _step_table(self, sig: np.ndarray, mid: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Per step k: (sigma, sigma_mid, sigma_to, sigma_noise); the last step is Euler to 0."""
        mid = mid.copy()
        mid[-1] = 0.0
        return [(float(sig[k]), float(mid[k]), float(sig[k + 1]), 0.0) for k in range(len(sig) - 1)]

    def step(
        self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> KDPM2DiscreteSchedulerOutput | tuple:
        """One stage of a DPM2 step; shapes ``(B, C, ...)``."""
        prev, x0 = self._stage(model_output, timestep, sample)
        return (
            (prev, x0) if not return_dict else KDPM2DiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
        )
