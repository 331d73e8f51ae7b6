"""TCDScheduler: strategic stochastic sampling of trajectory consistency distillation (Zheng et al. 2024)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core import grids as G
from ..core import prediction as P
from ..utils.outputs import BaseOutput
from ..utils.torch_utils import GeneratorArg
from .consistency_utils import ConsistencyBase
from .scheduling_utils import noise_like


@dataclass
class TCDSchedulerOutput(BaseOutput):
    """``prev_sample`` for the next call and ``pred_noised_sample`` (the estimate at the intermediate step s)."""

    prev_sample: torch.Tensor
    pred_noised_sample: torch.Tensor | None = None


class TCDScheduler(ConsistencyBase):
    """Each step jumps from t to ``s = floor((1 - eta) t_next)`` along the x0/eps estimates (DDIM-style), then
    adds fresh noise back up to ``t_next``. ``eta`` (``gamma`` in the paper) in [0, 1] sets the stochasticity.
    Arguments and defaults (the config) are LCM's, see
    :class:`~torchdiffusion.schedulers.consistency_utils.ConsistencyBase`."""

    def _origin(self, original_inference_steps: int | None, strength: float) -> np.ndarray:
        # As Diffusers: an explicit original_inference_steps means "every training step" for TCD.
        if original_inference_steps is not None:
            return G.distilled_timesteps(len(self.schedule), None, strength)
        return super()._origin(None, strength)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.3,
        generator: GeneratorArg = None,
        return_dict: bool = True,
    ) -> TCDSchedulerOutput | tuple:
        """One TCD step; ``eta`` in [0, 1], noise from ``generator``."""
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        i, t, nxt = self._current(model_output, timestep, sample)
        nxt = max(nxt, 0)
        s = math.floor((1 - eta) * nxt)
        ab_t, ab_prev, ab_s = self.schedule.alpha_bar(t), self.schedule.alpha_bar(nxt), self.schedule.alpha_bar(s)
        # 1. x0 and eps estimates, 2. DDIM-style jump to the intermediate step s
        x0, eps = P.to_x0_eps(model_output, sample, ab_t**0.5, (1 - ab_t) ** 0.5, self.config.prediction_type)
        x0 = P.process_x0(x0, self.config)
        noised = ab_s**0.5 * x0 + (1 - ab_s) ** 0.5 * eps
        # 3. forward-diffuse from s back to the next timestep (not after the last step)
        prev = noised
        if eta > 0 and i != len(self._grid) - 1:
            noise = noise_like(model_output, generator, noised.dtype)
            prev = (ab_prev / ab_s) ** 0.5 * noised + (1 - ab_prev / ab_s) ** 0.5 * noise
        self._step_index = i + 1
        return TCDSchedulerOutput(prev_sample=prev, pred_noised_sample=noised) if return_dict else (prev, noised)
