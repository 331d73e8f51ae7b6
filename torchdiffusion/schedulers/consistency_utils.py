"""Shared base of the consistency-model schedulers (LCM, TCD): their config, the distillation timestep grid and
the step bookkeeping. Both walk a few integer training timesteps over an ``alpha_bar`` table."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import grids as G
from ..core import prediction as P
from .scheduling_utils import (
    AlphaBarSchedulerMixin,
    PreviousTimestepMixin,
    SchedulerMixin,
    StepIndexMixin,
    timestep_to_int,
)


class ConsistencyBase(PreviousTimestepMixin, StepIndexMixin, AlphaBarSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Config, grid and bookkeeping shared by LCM and TCD (same arguments and defaults in Diffusers): timesteps
    picked from the distillation grid."""

    _compatibles: list[str] = []
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._init_schedule(set_alpha_to_one)

    def _origin(self, original_inference_steps: int | None, strength: float) -> np.ndarray:
        steps = (
            original_inference_steps if original_inference_steps is not None else self.config.original_inference_steps
        )
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= len(self.schedule):
            raise ValueError(f"original_inference_steps must be an int in [1, {len(self.schedule)}], got {steps!r}")
        return G.distilled_timesteps(len(self.schedule), steps, strength)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        original_inference_steps: int | None = None,
        timesteps: Any = None,
        strength: float = 1.0,
    ) -> None:
        """``num_inference_steps`` from the distillation grid (``original_inference_steps`` points, the first
        ``strength`` share for image-to-image), or custom descending ``timesteps``."""
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        origin = self._origin(original_inference_steps, strength)
        if timesteps is not None:
            grid = G.check_custom_timesteps(timesteps, len(self.schedule))
            self.num_inference_steps, self.custom_timesteps = len(grid), True
            grid = grid[max(len(grid) - min(int(len(grid) * strength), len(grid)), 0) :]
        else:
            n = G.check_num_inference_steps(num_inference_steps, len(self.schedule))
            if n > len(origin):
                raise ValueError(
                    f"num_inference_steps={n} is more than the {len(origin)} distillation timesteps available "
                    "(original_inference_steps x strength); use fewer steps or a larger strength"
                )
            grid, self.num_inference_steps, self.custom_timesteps = G.subsample_descending(origin, n), n, False
        self._set_grid(grid, device)
        self._reset_steps()

    def _current(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> tuple[int, int, int]:
        """Validate; return (step index, t, next timestep or -1 after the last)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(...) before step()")
        P.check_same_shape(model_output, sample)
        t = timestep_to_int(timestep)
        i = self._index_for_step(timestep)
        nxt = self._grid[i + 1] if i + 1 < len(self._grid) else -1
        return i, t, nxt
