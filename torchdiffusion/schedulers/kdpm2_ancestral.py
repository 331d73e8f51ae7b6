"""KDPM2AncestralDiscreteScheduler: k-diffusion's ``sample_dpm_2_ancestral`` ("DPM2 a")."""

from __future__ import annotations

import numpy as np
import torch

from ..core import solvers as S
from ..utils.torch_utils import GeneratorArg
from .sigma_utils import DPM2Base, SchedulerStepOutput


class KDPM2AncestralDiscreteSchedulerOutput(SchedulerStepOutput):
    """``prev_sample`` and ``pred_original_sample`` of one ancestral DPM2 stage."""


class KDPM2AncestralDiscreteScheduler(DPM2Base):
    """Ancestral DPM2: each step is a DPM2 step down to ``sigma_down`` followed by fresh noise ``sigma_up``
    (see ``core.solvers.ancestral_sigmas``). Stochastic: pass ``generator`` for reproducible samples.
    Arguments and defaults (the config) are KDPM2's, see :class:`~torchdiffusion.schedulers.sigma_utils.DPM2Base`."""

    def _split(self, sig: np.ndarray) -> list[tuple[float, float]]:
        return [S.ancestral_sigmas(float(sig[k]), float(sig[k + 1])) for k in range(len(sig) - 1)]

    def _midpoints(self, sig: np.ndarray) -> np.ndarray:
        """Per step k: the geometric midpoint between ``sigma_k`` and its ``sigma_down``."""
        return np.sqrt(sig[:-1] * np.array([down for down, _ in self._split(sig)]))

    def _step_table(self, sig: np.ndarray, mid: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Per step k: (sigma, sigma_mid, sigma_down, sigma_up); the last step is Euler to 0 without noise."""
        table = [(float(sig[k]), float(mid[k]), down, up) for k, (down, up) in enumerate(self._split(sig))]
        table[-1] = (table[-1][0], 0.0, 0.0, 0.0)
        return table

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: GeneratorArg = None,
        return_dict: bool = True,
    ) -> KDPM2AncestralDiscreteSchedulerOutput | tuple:
        """One stage of an ancestral DPM2 step; the noise of the second stage is drawn with ``generator``."""
        prev, x0 = self._stage(model_output, timestep, sample, generator)
        if not return_dict:
            return prev, x0
        return KDPM2AncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
