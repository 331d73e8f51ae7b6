"""The per-call LoRA scale (``cross_attention_kwargs={"scale": s}``), thread-safe.

Diffusers applies a call's scale by multiplying every LoRA layer's ``scaling`` before the call and dividing after:
two threads sharing a pipeline then see each other's scales. Here the scale lives in a :class:`contextvars.ContextVar`
(one value per thread / asyncio task), and a forward hook on each of peft's ``lora_B`` modules multiplies that
module's output by it. ``lora_B`` is linear, so ``scale * lora_B(lora_A(x)) * scaling`` is exactly what Diffusers
computes; the modules themselves are never changed. With scale 1 the hook returns the output untouched.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

__all__ = ["current_lora_scale", "ensure_scale_hooks", "lora_scale"]

_SCALE: ContextVar[float] = ContextVar("torchdiffusion_lora_scale", default=1.0)
_HOOK_LOCK = threading.Lock()
_HOOK_ATTR = "_td_lora_scale_hook"


def current_lora_scale() -> float:
    """The LoRA scale of the call running in this thread (1.0 outside any scaled call)."""
    return _SCALE.get()


def _scale_output(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
    scale = _SCALE.get()
    return None if scale == 1.0 else output * scale


def ensure_scale_hooks(model: nn.Module) -> None:
    """Hook every peft ``lora_B`` module of ``model`` that is not hooked yet (adapters added by any route)."""
    with _HOOK_LOCK:  # two threads must not hook the same module twice (the scale would apply twice)
        for module in model.modules():
            lora_b = getattr(module, "lora_B", None)
            if not isinstance(lora_b, nn.ModuleDict):
                continue
            for up in lora_b.values():
                if _HOOK_ATTR not in up.__dict__:
                    up.__dict__[_HOOK_ATTR] = up.register_forward_hook(_scale_output)


def check_scale(scale: Any, name: str = 'cross_attention_kwargs["scale"]') -> float:
    """``scale`` as a float; ``ValueError`` naming ``name`` unless it is a finite real number."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{name} must be a finite number, got {scale!r}")
    return float(scale)


@contextlib.contextmanager
def lora_scale(scale: float | None, *models: nn.Module) -> Iterator[None]:
    """Within the block, LoRA layers of ``models`` called from this thread add ``scale`` times their output.

    ``None`` means 1.0. Models whose adapters were added without these hooks get them here (only when
    ``scale != 1``). Other threads are unaffected.
    """
    value = 1.0 if scale is None else check_scale(scale)
    if value != 1.0:
        for model in models:
            if model is not None:
                ensure_scale_hooks(model)
    token = _SCALE.set(value)
    try:
        yield
    finally:
        _SCALE.reset(token)
