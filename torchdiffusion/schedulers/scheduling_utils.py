"""Scheduler base classes: loading/saving, copying per call, and the pieces every adapter shares.

A scheduler is ``class X(SchedulerMixin, ConfigMixin)`` with ``@register_to_config`` on ``__init__``; its config
is saved as ``scheduler_config.json``. Schedulers indexed by training timestep over an ``alpha_bar`` table (DDPM,
DDIM, PNDM, LCM, TCD, ...) also mix in :class:`AlphaBarSchedulerMixin`.

**Copying per call.** A scheduler holds per-run state (``timesteps``, step counters, multistep histories), so a
pipeline must not share one between concurrent calls. ``scheduler.copy()`` is the cheap, correct way: a shallow
copy whose lists/dicts/sets are copied one level, while the (read-only) schedule tensors are shared. That relies
on one invariant that every scheduler here keeps: **tensors held by a scheduler are never modified in place**,
only rebound. ``copy.deepcopy(scheduler)`` also works (it copies the tensors too).
"""

from __future__ import annotations

import collections
import copy as _copy
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch

from ..core import prediction as P
from ..core.grids import TIMESTEP_SPACINGS, check_custom_timesteps, timestep_grid
from ..core.grids import AysSchedules as AysSchedules  # Diffusers' place for the Align-Your-Steps table
from ..core.schedules import TrainedSchedule, check_choice
from ..core.solvers import VARIANCE_TYPES
from ..utils.outputs import BaseOutput
from ..utils.torch_utils import randn_tensor

SCHEDULER_CONFIG_NAME = "scheduler_config.json"


class KarrasDiffusionSchedulers(Enum):
    """The schedulers that share Stable-Diffusion-style configs; ``_compatibles`` lists their names."""

    DDIMScheduler = 1
    DDPMScheduler = 2
    PNDMScheduler = 3
    LMSDiscreteScheduler = 4
    EulerDiscreteScheduler = 5
    HeunDiscreteScheduler = 6
    EulerAncestralDiscreteScheduler = 7
    DPMSolverMultistepScheduler = 8
    DPMSolverSinglestepScheduler = 9
    KDPM2DiscreteScheduler = 10
    KDPM2AncestralDiscreteScheduler = 11
    DEISMultistepScheduler = 12
    UniPCMultistepScheduler = 13
    DPMSolverSDEScheduler = 14
    EDMEulerScheduler = 15


KARRAS_COMPATIBLES: list[str] = [e.name for e in KarrasDiffusionSchedulers]


@dataclass
class SchedulerOutput(BaseOutput):
    """Output of ``step``: ``prev_sample`` ``(B, C, ...)``, the input of the next model call."""

    prev_sample: torch.Tensor


class SchedulerMixin:
    """Loading, saving, compatibles and per-call copies for every scheduler."""

    config_name = SCHEDULER_CONFIG_NAME
    _compatibles: list[str] = []
    has_compatibles = True
    order = 1

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ):
        """Build from ``scheduler_config.json`` in a folder or Hub id (e.g. ``subfolder="scheduler"``).

        Extra ``kwargs`` that are config keys override the saved values (``timestep_spacing="trailing"``).
        """
        if pretrained_model_name_or_path is None:
            raise ValueError("pretrained_model_name_or_path is required: a local folder or a Hub model id")
        config, unused = cls.load_config(
            pretrained_model_name_or_path, subfolder=subfolder, return_unused_kwargs=True, **kwargs
        )
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **unused)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``<save_directory>/scheduler_config.json``."""
        self.save_config(save_directory=save_directory, push_to_hub=push_to_hub, **kwargs)

    @property
    def compatibles(self) -> list[type]:
        """This class and every class whose config it can be swapped with via ``from_config``."""
        return [type(self)] + self._compatible_classes()

    def copy(self):
        """An independent copy for one sampling run (see the module docstring); cheap: tensors are shared."""
        new = _copy.copy(self)
        for key, value in vars(self).items():
            if isinstance(value, (list, dict, set, collections.deque)):
                new.__dict__[key] = _copy.copy(value)
        return new

    def __len__(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))


# ---- argument helpers shared by the adapters -----------------------------------------------------------------
def timestep_to_int(timestep: Any, name: str = "timestep") -> int:
    """A scalar timestep (int, integral float, 0-d/1-element tensor) as an int; ``TypeError`` otherwise."""
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1:
            raise ValueError(f"{name} must be a single timestep, got a tensor of shape {tuple(timestep.shape)}")
        timestep = timestep.item()
    if isinstance(timestep, (float, np.floating)) and float(timestep).is_integer():
        timestep = int(timestep)
    if isinstance(timestep, bool) or not isinstance(timestep, (int, np.integer)):
        raise TypeError(f"{name} must be an integer timestep, got {timestep!r}")
    return int(timestep)


def check_noise(noise: Any, like: torch.Tensor, name: str = "original_samples") -> None:
    """``ValueError`` unless ``noise`` is a tensor shaped like ``like`` (the argument called ``name``, which must be
    a tensor: ``TypeError`` otherwise)."""
    if not isinstance(like, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(like).__name__}")
    if not isinstance(noise, torch.Tensor) or noise.shape != like.shape:
        raise ValueError(f"noise must be a tensor shaped like {name} {tuple(like.shape)}")


def noise_like(tensor: torch.Tensor, generator: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``tensor``, on its device (CPU-drawn from ``generator``, see
    ``randn_tensor``), in ``dtype`` (default: ``tensor``'s)."""
    return randn_tensor(tensor.shape, generator=generator, device=tensor.device, dtype=dtype or tensor.dtype)


def check_config(config) -> None:
    """Validate the keys common to many schedulers (only those present in ``config``); errors name the key."""
    for key, allowed in (
        ("prediction_type", P.PREDICTION_TYPES),
        ("timestep_spacing", TIMESTEP_SPACINGS),
        ("variance_type", VARIANCE_TYPES),
    ):
        if key in config and config[key] is not None:
            check_choice(key, config[key], allowed)
    offset = config.get("steps_offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"steps_offset must be an int >= 0, got {offset!r}")
    ratio = config.get("dynamic_thresholding_ratio", 0.995)
    if not 0 <= ratio <= 1:  # a quantile; 0 (the smallest |x0|, then clamped to >= 1) is Diffusers-valid
        raise ValueError(f"dynamic_thresholding_ratio must be in [0, 1], got {ratio!r}")
    for key in ("clip_sample_range", "sample_max_value"):
        if key in config and not config[key] > 0:
            raise ValueError(f"{key} must be > 0, got {config[key]!r}")


class TrainedScheduleMixin:
    """The training schedule of a scheduler over ``alpha_bar``: ``self.schedule`` (a
    :class:`~torchdiffusion.core.schedules.TrainedSchedule`) and its ``betas``/``alphas``/``alphas_cumprod``
    (float32, like Diffusers)."""

    def _init_trained_schedule(self, checked: Any = None) -> None:
        """Validate ``checked`` (default: the whole config) and build the schedule from the config."""
        check_config(self.config if checked is None else checked)
        self.schedule = TrainedSchedule.from_config(self.config)
        self.betas, self.alphas = self.schedule.betas, self.schedule.alphas
        self.alphas_cumprod = self.schedule.alphas_cumprod


class AlphaBarSchedulerMixin(TrainedScheduleMixin):
    """Shared pieces of schedulers indexed by integer training timesteps over ``alpha_bar`` (``alphas_cumprod``).

    Gives ``init_noise_sigma``, ``scale_model_input``, ``add_noise``, ``get_velocity`` and integer grids for
    ``set_timesteps``.
    """

    init_noise_sigma = 1.0  # the initial noise is standard normal

    def _init_schedule(self, set_alpha_to_one: bool | None = None) -> None:
        """Call at the end of ``__init__``: validates the config and builds the noise schedule; schedulers with a
        ``set_alpha_to_one`` argument pass it (the final step goes to ``alpha_bar = 1``, else to ``alpha_bar_0``)."""
        self._init_trained_schedule()
        self.one = torch.tensor(1.0)
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self._set_grid(np.arange(len(self.schedule))[::-1].copy(), None)
        if set_alpha_to_one is not None:
            self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
            self._final_ab = 1.0 if set_alpha_to_one else float(self.schedule.alphas_cumprod64[0])

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """These schedulers feed the sample to the model unscaled."""
        return sample

    # ---- grids ---------------------------------------------------------------------------------------------
    def set_timesteps(
        self, num_inference_steps: int | None = None, device: str | torch.device | None = None, timesteps: Any = None
    ) -> None:
        """Choose the sampling grid: ``num_inference_steps`` spaced by ``timestep_spacing``, or custom ``timesteps``."""
        self._set_integer_timesteps(num_inference_steps, device, timesteps)

    def _set_grid(self, timesteps: np.ndarray, device) -> None:
        self.timesteps = torch.from_numpy(np.asarray(timesteps, dtype=np.int64)).to(device)
        self._grid = [int(t) for t in timesteps]
        self._grid_index = {t: i for i, t in enumerate(self._grid)}

    def _set_integer_timesteps(self, num_inference_steps: int | None, device, timesteps) -> None:
        """``set_timesteps`` for integer grids: exactly one of ``num_inference_steps`` or ``timesteps``."""
        T = len(self.schedule)
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass either num_inference_steps or timesteps, not both")
        if timesteps is not None:
            grid = check_custom_timesteps(timesteps, T)
            self.custom_timesteps = True
        elif num_inference_steps is None:
            raise ValueError("set_timesteps needs num_inference_steps (an int >= 1) or timesteps (a descending list)")
        else:
            cfg = self.config
            grid = timestep_grid(num_inference_steps, T, cfg.timestep_spacing, cfg.get("steps_offset", 0))
            grid = grid.round().astype(np.int64)
            if grid[0] >= T:
                raise ValueError(
                    f"steps_offset={cfg.steps_offset} with num_inference_steps={num_inference_steps} and leading "
                    f"spacing gives timestep {grid[0]}, past the last training timestep {T - 1}; use fewer steps"
                )
            self.custom_timesteps = False
        self.num_inference_steps = len(grid)
        self._set_grid(grid, device)

    def _grid_position(self, t: int) -> int | None:
        return self._grid_index.get(t)

    def _check_timestep(self, t: int) -> None:
        if not 0 <= t < len(self.schedule):
            raise ValueError(f"timestep={t} is outside the training range [0, {len(self.schedule) - 1}]")

    def _begin_grid_step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> int:
        """Validate ``step`` arguments of a scheduler that needs ``set_timesteps`` first; return the timestep."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        P.check_same_shape(model_output, sample)
        t = timestep_to_int(timestep)
        self._check_timestep(t)
        return t

    # ---- forward process (see core.schedules.TrainedSchedule) ----------------------------------------------
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """Forward process ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``; ``timesteps`` scalar or ``(B,)``."""
        check_noise(noise, original_samples)
        return self.schedule.add_noise(original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """The ``v_prediction`` target ``sqrt(ab_t) eps - sqrt(1 - ab_t) x0`` (``sample`` is ``x0``)."""
        check_noise(noise, sample, "sample")
        return self.schedule.velocity(sample, noise, timesteps)


class PreviousTimestepMixin:
    """``previous_timestep`` for the integer-grid schedulers whose Diffusers class has it (DDPM, LCM, TCD)."""

    def previous_timestep(self, timestep: Any) -> int | torch.Tensor:
        """The timestep after ``timestep`` in the current grid (``-1`` after the last); ``t - 1`` with no grid set."""
        t = timestep_to_int(timestep)
        if self.num_inference_steps is None:
            prev = t - 1
        else:
            i = self._grid_position(t)
            if i is None:
                raise ValueError(f"timestep={t} is not in the scheduler's timesteps {self._grid}")
            prev = self._grid[i + 1] if i + 1 < len(self._grid) else -1
        return torch.tensor(prev) if isinstance(timestep, torch.Tensor) else prev


class StepIndexMixin:
    """Step counting for schedulers that walk their ``timesteps`` in order (k-diffusion style, LCM, flow matching).

    The first ``step``/``scale_model_input`` finds its place from the timestep (or from ``begin_index``, set by
    image-to-image pipelines that start part-way); later calls just advance ``step_index``.
    Subclasses keep ``self.timesteps`` and call ``self._reset_steps()`` in ``set_timesteps``.
    """

    _step_index: int | None = None
    _begin_index: int | None = None
    _timestep_values: list[float] = []

    @property
    def step_index(self) -> int | None:
        """Index of the next step in ``timesteps`` (``None`` before the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First step index, when a pipeline fixed it with :meth:`set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at ``timesteps[begin_index]`` (image-to-image pipelines call this before the loop)."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or begin_index < 0:
            raise ValueError(f"begin_index must be an int >= 0, got {begin_index!r}")
        n = len(self._timestep_values)
        if n and begin_index >= n:
            raise ValueError(f"begin_index={begin_index} is past the last of the {n} timesteps")
        self._begin_index = int(begin_index)

    def _reset_steps(self) -> None:
        self._timestep_values = [float(t) for t in self.timesteps.tolist()]
        self._step_index = None
        self._begin_index = None

    def index_for_timestep(self, timestep: Any, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule; when it occurs twice, the second (so a run that starts
        part-way does not skip a noise level), except for the first timestep of the schedule."""
        values = self._timestep_values if schedule_timesteps is None else schedule_timesteps.tolist()
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a single value, got shape {tuple(timestep.shape)}")
            timestep = timestep.item()
        if not values:
            raise ValueError("call set_timesteps(...) before stepping")
        hits = [i for i, v in enumerate(values) if v == timestep]
        if not hits:
            raise ValueError(
                f"timestep={timestep!r} is not one of the scheduler's timesteps; pass a value from .timesteps"
            )
        # A repeated timestep means a run that starts part-way (take the second); but the schedule's very first
        # timestep always means "from the start" (Karras grids on cosine schedules repeat t=999; Diffusers then
        # skips a step and runs off the end of its tables).
        return hits[1] if len(hits) > 1 and hits[0] != 0 else hits[0]

    def _init_step_index(self, timestep: Any) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _index_for_step(self, timestep: Any) -> int:
        """The step index for this call (initialised on the first); errors past the end of the schedule."""
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self._timestep_values):
            raise ValueError(
                f"step() was called {self._step_index + 1} times but there are only {len(self._timestep_values)} "
                "timesteps; call set_timesteps(...) again to start a new run"
            )
        return self._step_index

    def _indices_for(self, timesteps: Any, batch: int) -> list[int]:
        """Step indices for ``add_noise``: looked up per sample, or the current/begin index once stepping started."""
        t = torch.as_tensor(timesteps).flatten()
        if self._begin_index is None:
            idx = [self.index_for_timestep(v) for v in t.tolist()]
        else:
            idx = [self._step_index if self._step_index is not None else self._begin_index] * max(t.numel(), 1)
        if len(idx) == 1:
            idx = idx * batch
        if len(idx) != batch:
            raise ValueError(f"timesteps has {len(idx)} entries but the batch has {batch} samples")
        return idx


def reject_integer_index(timestep: Any, cls_name: str) -> None:
    """Timesteps of k-diffusion schedulers are floats; an int is almost always an ``enumerate`` index by mistake."""
    if isinstance(timestep, (int, np.integer)) or (
        isinstance(timestep, torch.Tensor) and not timestep.dtype.is_floating_point
    ):
        raise ValueError(
            f"timestep={timestep!r} is an integer: pass a value from {cls_name}.timesteps (floats), not a loop index"
        )
