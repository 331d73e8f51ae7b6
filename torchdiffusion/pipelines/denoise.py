"""THE denoising loop every pipeline uses, and the small steps around it that pipelines share.

A pipeline copies its scheduler per call (:func:`fresh_scheduler`), so one pipeline object can serve several
threads at once, then hands :func:`denoise` a ``predict`` function that returns the model output (guidance
already applied) for the scaled input.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

Predict = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]
AfterStep = Callable[[torch.Tensor, int, torch.Tensor, dict], torch.Tensor]


def fresh_scheduler(scheduler: Any) -> Any:
    """A private copy of ``scheduler`` for one call (its step counters and timesteps are per call).

    Our schedulers' ``copy()`` shares their read-only schedule tensors; anything else is deep-copied. (Looked up
    on the class: a Diffusers scheduler's ``__getattr__`` raises ``KeyError`` for ``copy``.)
    """
    cheap = getattr(type(scheduler), "copy", None)
    return scheduler.copy() if callable(cheap) else copy.deepcopy(scheduler)


def step_kwargs(scheduler: Any, **candidates: Any) -> dict[str, Any]:
    """The subset of ``candidates`` (e.g. ``generator``, ``eta``) that ``scheduler.step`` accepts."""
    params = inspect.signature(scheduler.step).parameters
    return {k: v for k, v in candidates.items() if k in params and v is not None}


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum``; ``ValueError``/``TypeError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_finite_number(value: Any, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as float if it is a finite real in [minimum, maximum]; else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    return value


def set_timesteps(
    scheduler: Any,
    num_inference_steps: int | None = None,
    device: torch.device | str | None = None,
    timesteps: Sequence[int] | None = None,
    sigmas: Sequence[float] | None = None,
) -> torch.Tensor:
    """Configure ``scheduler`` for a call (a step count, or explicit ``timesteps`` or ``sigmas``); returns timesteps."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass either timesteps or sigmas, not both")
    params = inspect.signature(scheduler.set_timesteps).parameters
    if timesteps is not None:
        if "timesteps" not in params:
            raise ValueError(f"timesteps: {type(scheduler).__name__} does not accept custom timesteps")
        scheduler.set_timesteps(timesteps=list(timesteps), device=device)
    elif sigmas is not None:
        if "sigmas" not in params:
            raise ValueError(f"sigmas: {type(scheduler).__name__} does not accept custom sigmas")
        scheduler.set_timesteps(sigmas=list(sigmas), device=device)
    else:
        check_positive_int(num_inference_steps, "num_inference_steps")
        scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps


def check_latents(latents: Any, shape: tuple[int, ...], factor: int) -> torch.Tensor:
    """``latents`` if it is a tensor of ``shape`` (batch, channels, height/factor, width/factor); else
    ``ValueError`` naming ``latents``."""
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != tuple(shape):
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(
            f"latents must have shape {tuple(shape)} (batch, channels, height/{factor}, width/{factor}), got {got}"
        )
    return latents


def strength_timesteps(scheduler: Any, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """The tail of ``scheduler.timesteps`` that ``strength`` keeps (``strength * num_inference_steps`` steps) and
    the index in ``scheduler.timesteps`` where it begins; ``ValueError`` naming ``strength`` when no step would
    be left. Changes nothing on the scheduler: pass the index to :func:`add_noise_at` and :func:`denoise`.
    """
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    start = max(num_inference_steps - kept, 0) * scheduler.order
    timesteps = scheduler.timesteps[start:]
    if len(timesteps) == 0 or kept == 0:
        raise ValueError(
            f"strength={strength} with num_inference_steps={num_inference_steps} leaves no denoising step; "
            "raise strength or num_inference_steps"
        )
    return timesteps, start


def begin_at(scheduler: Any, begin_index: int | None) -> None:
    """Tell ``scheduler`` (when it counts its steps) that the run starts at ``timesteps[begin_index]``."""
    if begin_index is not None and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin_index)


def add_noise_at(scheduler: Any, original: torch.Tensor, noise: torch.Tensor, begin_index: int) -> torch.Tensor:
    """``original`` (batch, ...) noised with ``noise`` to the level of ``scheduler.timesteps[begin_index]``,
    where a run that starts part-way (image-to-image) begins; the scheduler is told that start (:func:`begin_at`).
    """
    begin_at(scheduler, begin_index)
    first = scheduler.timesteps[begin_index : begin_index + 1].repeat(original.shape[0])
    return scheduler.add_noise(original, noise, first)


def denoise(
    pipe: Any,
    scheduler: Any,
    latents: torch.Tensor,
    predict: Predict,
    timesteps: torch.Tensor | None = None,
    *,
    generator: Any = None,
    step_options: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    after_step: AfterStep | None = None,
    callback_on_step_end: Callable[..., dict] | None = None,
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    begin_index: int | None = None,
    interrupted: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Run the reverse process from ``latents`` (batch, channels, height, width) over ``timesteps``.

    Each step: scale the input, ``predict(x_in, t, state)`` (the model output, guidance applied), scheduler
    step (with ``generator`` and those ``step_options`` such as ``eta`` that the scheduler's ``step`` takes),
    optional ``after_step`` (e.g. re-impose the known region when inpainting), optional user callback
    ``callback_on_step_end(pipe, i, t, {name: state[name]})`` whose returned tensors replace the state's.
    ``state`` holds everything a callback may read or replace; ``state["latents"]`` is the running sample.
    ``begin_index``: where ``timesteps`` starts in the scheduler's grid, for a run that starts part-way (see
    :func:`strength_timesteps`). The loop stops early once ``interrupted()`` is true (default: once
    ``pipe._interrupt`` is).
    """
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    state = {} if state is None else state
    state["latents"] = latents
    extra = step_kwargs(scheduler, generator=generator, **(step_options or {}))
    begin_at(scheduler, begin_index)
    if interrupted is None:

        def interrupted() -> bool:
            return bool(getattr(pipe, "_interrupt", False))

    if callback_on_step_end is not None:
        missing = [k for k in callback_on_step_end_tensor_inputs if k not in state]
        if missing:
            raise ValueError(f"callback_on_step_end_tensor_inputs names {missing}; allowed: {sorted(state)}")
    with pipe.progress_bar(total=len(timesteps)) as bar:
        for i, t in enumerate(timesteps):
            if interrupted():
                break
            x = state["latents"]
            x_in = scheduler.scale_model_input(x, t)
            model_output = predict(x_in, t, state)
            x = scheduler.step(model_output, t, x, **extra, return_dict=False)[0]
            if after_step is not None:
                x = after_step(x, i, t, state)
            state["latents"] = x
            if callback_on_step_end is not None:
                shown = {k: state[k] for k in callback_on_step_end_tensor_inputs}
                returned = callback_on_step_end(pipe, i, t, shown) or {}
                state.update({k: v for k, v in returned.items() if k in state})
            bar.update()
    return state["latents"]
