"""One Stable Diffusion call: its arguments and the state it builds, in one typed object.

Every step of a call (checks, prompt encoding, timesteps, latents, the guided UNet, decoding) takes the
:class:`SDCall` explicitly. The pipeline object itself stays shared and unchanged, so one pipeline can serve
several threads at once. The Diffusers-style properties that step callbacks read and set (``pipe.guidance_scale``,
``pipe._interrupt``, ...) find the call running in the current thread through :func:`running_call`; after a call
they read the values of the last call that finished, as in Diffusers.

A new per-call option is one more field here, read by the step that uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

_RUNNING = threading.local()  # .calls: {id(pipeline): SDCall} for the calls running in this thread

# The call values that the pipeline exposes as Diffusers-compatible properties, with their value before any call.
PROPERTY_DEFAULTS: dict[str, Any] = {
    "guidance_scale": None,
    "guidance_rescale": 0.0,
    "clip_skip": None,
    "cross_attention_kwargs": None,
    "num_timesteps": 0,
    "interrupt": False,
}


@dataclass
class SDCall:
    """The arguments of one Stable Diffusion call and what the call derives from them.

    The fields named like ``__call__``'s arguments hold those arguments (``image``/``mask`` hold the preprocessed
    inputs of image-to-image and inpainting: tensors (batch, channels, height, width)). The rest is filled in
    while the call runs: ``batch_size`` (prompts x images per prompt), ``scheduler`` (this call's private copy),
    ``timesteps`` (the steps it runs), ``begin_index`` (where in the scheduler's grid image-to-image starts),
    ``num_timesteps`` (how many steps), ``interrupt`` (set by a callback to stop early) and ``feature_cache`` (this
    call's :class:`~torchdiffusion.models.feature_cache.UNetFeatureCache` when ``cache_interval`` is set).

    The speed options: ``cache_interval``/``cache_depth`` (UNet feature caching, see
    :mod:`torchdiffusion.models.feature_cache`) and ``guidance_end`` (the fraction of the steps that run
    classifier-free guidance; the conditional branch alone after that).
    """

    prompt: str | list[str] | None = None
    negative_prompt: str | list[str] | None = None
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int = 50
    custom_timesteps: list[int] | None = None
    sigmas: list[float] | None = None
    strength: float | None = None
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0
    num_images_per_prompt: int = 1
    eta: float = 0.0
    generator: Any = None
    latents: torch.Tensor | None = None
    image: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    masked_image_latents: torch.Tensor | None = None
    output_type: str = "pil"
    return_dict: bool = True
    cross_attention_kwargs: dict[str, Any] | None = None
    clip_skip: int | None = None
    callback_on_step_end: Callable[..., dict] | None = None
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)
    cache_interval: int | None = None
    cache_depth: int = 1
    guidance_end: float = 1.0
    # filled in by the call's steps
    batch_size: int = 0
    scheduler: Any = None
    timesteps: torch.Tensor | None = None
    begin_index: int | None = None
    num_timesteps: int = 0
    interrupt: bool = False
    feature_cache: Any = None

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> SDCall:
        """The call for ``__call__``'s arguments (``locals()`` at its top; names that are no field are left
        out, ``timesteps`` becomes ``custom_timesteps``). A Diffusers ``PipelineCallback`` object brings its own
        ``tensor_inputs``."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in arguments.items() if k in names and k not in ("image", "timesteps")}
        call = cls(**values, custom_timesteps=arguments.get("timesteps"))
        if hasattr(call.callback_on_step_end, "tensor_inputs"):
            call.callback_on_step_end_tensor_inputs = call.callback_on_step_end.tensor_inputs
        return call

    def interrupted(self) -> bool:
        """True once a callback set ``pipe._interrupt`` (the denoising loop then stops)."""
        return bool(self.interrupt)

    def property_values(self) -> dict[str, Any]:
        """The values the pipeline's Diffusers-style properties show for this call."""
        return {name: getattr(self, name) for name in PROPERTY_DEFAULTS}


def running_call(pipe: Any) -> SDCall | None:
    """The call of ``pipe`` running in this thread, or None."""
    return getattr(_RUNNING, "calls", {}).get(id(pipe))


def enter_call(pipe: Any, call: SDCall) -> SDCall | None:
    """Make ``call`` the running call of ``pipe`` in this thread; returns the one it replaces (a nested call)."""
    calls = getattr(_RUNNING, "calls", None)
    if calls is None:
        calls = _RUNNING.calls = {}
    previous = calls.get(id(pipe))
    calls[id(pipe)] = call
    return previous


def exit_call(pipe: Any, call: SDCall, previous: SDCall | None) -> None:
    """Undo :func:`enter_call` and record ``call``'s property values as the pipeline's last finished call."""
    if previous is None:
        _RUNNING.calls.pop(id(pipe), None)
    else:
        _RUNNING.calls[id(pipe)] = previous
    object.__setattr__(pipe, "_last_call_values", call.property_values())


def call_property(name: str) -> property:
    """A pipeline property for the call value ``name``: the running call's (in this thread), else the last
    finished call's, else its default. It can be set only while a call runs (from a step callback)."""
    default = PROPERTY_DEFAULTS[name]

    def get(self: Any) -> Any:
        call = running_call(self)
        if call is not None:
            return getattr(call, name)
        return getattr(self, "_last_call_values", {}).get(name, default)

    def set_(self: Any, value: Any) -> None:
        call = running_call(self)
        if call is None:
            raise AttributeError(
                f"{name} can only be set while the pipeline runs (e.g. from callback_on_step_end); "
                f"pass it to the call instead"
            )
        setattr(call, name, value)

    return property(get, set_, doc=f"This thread's running call's ``{name}``; after a call, the last call's.")
