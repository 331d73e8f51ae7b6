"""PNDMScheduler: pseudo numerical methods for diffusion models (Liu et al. 2022): Runge-Kutta warm-up + PLMS."""

from __future__ import annotations

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import prediction as P
from ..core import solvers as S
from .scheduling_utils import KARRAS_COMPATIBLES, AlphaBarSchedulerMixin, SchedulerMixin, SchedulerOutput


class PNDMScheduler(AlphaBarSchedulerMixin, SchedulerMixin, ConfigMixin):
    """PNDM: 3 pseudo Runge-Kutta steps (4 model calls each, on half steps) to fill the history, then the
    pseudo linear multistep (PLMS) update; ``skip_prk_steps=True`` warms up with a Heun-like start instead
    (Stable Diffusion's default). The transfer is ``core.solvers.pndm_transfer`` with a fixed stride of
    ``num_train_timesteps // num_inference_steps``. ``prediction_type="sample"`` also works here.
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    pndm_order = 4

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        self._init_schedule(set_alpha_to_one)
        self.timesteps = self.prk_timesteps = self.plms_timesteps = None
        self._reset()

    def _reset(self) -> None:
        self.ets: list[torch.Tensor] = []
        self.counter, self.cur_model_output, self.cur_sample = 0, 0, None

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """Lay out the PRK (unless skipped) and PLMS model calls for ``num_inference_steps`` (at least 2... see below).

        PRK needs at least 4 grid points (3 warm-up steps); with fewer, set ``skip_prk_steps=True``.
        """
        self._set_integer_timesteps(num_inference_steps, None, None)
        grid = np.array(self._grid[::-1])  # ascending, as PNDM builds it
        n = len(grid)
        self._stride = len(self.schedule) // n
        if self.config.skip_prk_steps:
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([grid[:-1], grid[-2:-1], grid[-1:]])[::-1].copy()
        else:
            if n < self.pndm_order:
                raise ValueError(
                    f"num_inference_steps={n} is too few for PNDM's Runge-Kutta warm-up (needs >= {self.pndm_order}); "
                    "use more steps or skip_prk_steps=True"
                )
            half = np.tile(np.array([0, self._stride // 2]), self.pndm_order)
            prk = np.array(grid[-self.pndm_order :]).repeat(2) + half
            self.prk_timesteps = (prk[:-1].repeat(2)[1:-1])[::-1].copy()
            self.plms_timesteps = grid[:-3][::-1].copy()
        calls = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(calls).to(device)
        self._reset()

    def _eps(self, model_output: torch.Tensor, sample: torch.Tensor, t: int) -> torch.Tensor:
        ab = self.schedule.alpha_bar(t)
        return P.to_x0_eps(model_output, sample, ab**0.5, (1 - ab) ** 0.5, self.config.prediction_type)[1]

    def _transfer(self, sample: torch.Tensor, eps: torch.Tensor, t: int, s: int) -> torch.Tensor:
        return S.pndm_transfer(sample, eps, self.schedule.alpha_bar(t), self.schedule.alpha_bar(s, self._final_ab))

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple:
        """Run the PRK or the PLMS update, whichever phase this call belongs to; shapes ``(B, C, ...)``."""
        t = self._begin_grid_step(model_output, timestep, sample)
        eps = self._eps(model_output, sample, t)
        prk = self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps
        prev = self._step_prk(eps, t, sample) if prk else self._step_plms(eps, t, sample)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def step_prk(self, model_output, timestep, sample, return_dict: bool = True):
        """Diffusers' entry point for one Runge-Kutta call (``step`` dispatches automatically)."""
        return self.step(model_output, timestep, sample, return_dict)

    step_plms = step_prk

    def _step_prk(self, eps: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        # RK4 on the transfer: calls at t, t - h/2, t - h/2, t - h with weights 1/6, 1/3, 1/3, 1/6
        stage = self.counter % 4
        prev_t = t - (0 if self.counter % 2 else self._stride // 2)
        t0 = int(self.prk_timesteps[self.counter // 4 * 4])
        if stage == 0:
            self.cur_model_output, self.cur_sample = eps / 6, sample
            self.ets = self.ets + [eps]
        elif stage in (1, 2):
            self.cur_model_output = self.cur_model_output + eps / 3
        else:
            eps, self.cur_model_output = self.cur_model_output + eps / 6, 0
        return self._transfer(self.cur_sample, eps, t0, prev_t)

    def _step_plms(self, eps: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        prev_t = t - self._stride
        if self.counter != 1:
            self.ets = self.ets[-3:] + [eps]
        else:  # second call of the skip-PRK start repeats the first timestep: Heun-like correction
            prev_t, t = t, t + self._stride
        if len(self.ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            eps, sample, self.cur_sample = (eps + self.ets[-1]) / 2, self.cur_sample, None
        else:
            eps = S.adams_bashforth(self.ets[-4:])
        return self._transfer(sample, eps, t, prev_t)
