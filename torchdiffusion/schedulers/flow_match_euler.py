"""FlowMatchEulerDiscreteScheduler: Euler steps of a rectified-flow ODE (SD3, Flux), with resolution shifting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..core import grids as G
from ..core.schedules import check_choice
from ..utils.outputs import BaseOutput
from ..utils.torch_utils import GeneratorArg
from .scheduling_utils import SchedulerMixin, check_noise, noise_like
from .sigma_utils import SigmaStepMixin


@dataclass
class FlowMatchEulerDiscreteSchedulerOutput(BaseOutput):
    """``prev_sample`` ``(B, C, ...)``: the sample at the next noise level."""

    prev_sample: torch.Tensor


class FlowMatchEulerDiscreteScheduler(SigmaStepMixin, SchedulerMixin, ConfigMixin):
    """Flow matching: ``x_s = (1 - s) x0 + s eps`` and the model predicts ``u = eps - x0``; each step is
    ``x + (s_next - s) u``. ``shift`` (or ``use_dynamic_shifting`` with ``mu`` in ``set_timesteps``) moves the
    grid towards high noise for large images; ``stochastic_sampling`` re-noises the x0 estimate instead.
    """

    _compatibles: list[str] = []
    _integer_timestep_is_index = True  # as in Diffusers: step(out, 999, x) is refused
    order = 1
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ):
        check_choice("time_shift_type", time_shift_type, ("exponential", "linear"))
        G.sigma_grid_kind(self.config)
        self.set_shift(shift)
        if shift_terminal is not None and not 0 <= shift_terminal < 1:
            raise ValueError(f"shift_terminal must be in [0, 1), got {shift_terminal!r}")
        s = np.linspace(1, num_train_timesteps, num_train_timesteps)[::-1] / num_train_timesteps
        s = s if use_dynamic_shifting else G.flow_shift(s, shift)
        self._set(torch.from_numpy(s).float(), None, final=None)
        self.sigma_min, self.sigma_max = float(self.sigmas[-1]), float(self.sigmas[0])
        self.num_inference_steps = None

    @property
    def shift(self) -> float:
        """The static shift currently applied (``set_shift`` changes it)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        """Set the static shift (> 0) that later ``set_timesteps`` calls apply."""
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift!r}")
        self._shift = shift

    def _set(self, sigmas: torch.Tensor, timesteps: torch.Tensor | None, final: float | None, device: Any = None):
        ts = sigmas * self.config.num_train_timesteps if timesteps is None else timesteps
        self._set_levels(ts, sigmas if final is None else torch.cat([sigmas, torch.tensor([final])]), device)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Any = None,
        mu: float | None = None,
        timesteps: Any = None,
    ) -> None:
        """Grid of ``num_inference_steps`` (or custom ``sigmas`` in (0, 1] / ``timesteps``), shifted."""
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("mu is required when use_dynamic_shifting=True (see core.grids.calculate_shift)")
        s = G.flow_match_sigmas(
            cfg, num_inference_steps, sigmas, timesteps, mu, self.shift, (self.sigma_min, self.sigma_max)
        )
        n = len(s)
        sig = torch.from_numpy(s).float()
        ts = None if timesteps is None else torch.as_tensor(np.asarray(timesteps, dtype=np.float32))
        if cfg.invert_sigmas:
            sig, ts = 1.0 - sig, None
        self._set(sig.to(device), ts, 1.0 if cfg.invert_sigmas else 0.0, device)
        self.sigmas = self.sigmas.cpu()
        self.num_inference_steps = n

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Flow models take the sample unscaled."""
        return sample

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor) -> torch.Tensor:
        """Forward process ``(1 - s) x0 + s eps`` at each timestep's noise level (image-to-image)."""
        s = self._sigma_of(timestep, sample)
        return s * noise + (1.0 - s) * sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """Same as :meth:`scale_noise` with the argument order of the other schedulers."""
        check_noise(noise, original_samples)
        return self.scale_noise(original_samples, timesteps, noise)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Any = None) -> torch.Tensor:
        """The flow training target ``eps - x0`` (independent of the timestep)."""
        return noise - sample

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
    ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple:
        """One Euler step of the flow ODE (or a re-noised x0 step with ``stochastic_sampling``)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(...) before step()")
        i = self._begin_step(model_output, timestep, sample)
        x = sample.to(torch.float32)
        s, s_next = self._sig[i], self._sig[i + 1]
        if self.config.stochastic_sampling:
            x0 = x - s * model_output
            noise = noise_like(x, generator)
            prev = (1.0 - s_next) * x0 + s_next * noise
        else:
            prev = x + (s_next - s) * model_output
        prev = prev.to(model_output.dtype)
        self._step_index = i + 1
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev) if return_dict else (prev,)
