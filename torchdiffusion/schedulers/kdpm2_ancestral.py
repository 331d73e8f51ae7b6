"""KDPM2AncestralDiscreteScheduler: k-diffusion's ``sample_dpm_2_ancestral`` ("DPM2 a")."""

from __future__ import annotations

import numpy as np
import torch

from ..configuration import register_to_config
from ..core import solvers as S
from ..utils.torch_utils import GeneratorArg
from .kdpm2 import DPM2Base
from .sigma_utils import SchedulerStepOutput


class KDPM2AncestralDiscreteSchedulerOutput(SchedulerStepOutput):
    """``prev_sample`` and ``pred_original_sample`` of one ancestral DPM2 stage."""


class KDPM2AncestralDiscreteScheduler(DPM2Base):
    """Ancestral DPM2: each step is a DPM2 step down to ``sigma_down`` followed by fresh noise ``sigma_up``
    (see ``core.solvers.ancestral_sigmas``). Stochastic: pass ``generator`` for reproducible samples."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._init_sigmas()
        self.set_timesteps(num_train_timesteps)
        self.num_inference_steps = None

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
