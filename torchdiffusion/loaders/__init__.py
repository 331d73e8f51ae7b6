"""LoRA adapters (through ``peft``, imported only when used) and LoRA files in Diffusers', PEFT's and kohya's
layouts. The mixins are bases of :class:`~torchdiffusion.models.modeling.ModelMixin` and the Stable Diffusion
pipelines; the converters mirror ``diffusers.utils``.

Where this differs from Diffusers, on purpose: the per-call scale never touches the modules (thread-safe, same
numbers); loading is all-or-nothing and strict (keys that fit no module, DoRA ``dora_scale`` keys and wrong shapes
are errors, not warnings); one adapter name is used across the components (``default_<n>``); the text encoder's
adapters go through peft directly, not transformers' adapter API; ``hotswap`` and per-block UNet weight dicts in
``set_adapters`` are not supported; ``lora_state_dict`` returns the file's keys as they are.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PeftAdapterMixin": "peft_model",
    "StableDiffusionLoraLoaderMixin": "lora_pipeline",
    "LORA_WEIGHT_NAME": "formats",
    "LORA_WEIGHT_NAME_SAFE": "formats",
    "convert_state_dict_to_diffusers": "formats",
    "convert_state_dict_to_kohya": "formats",
    "convert_state_dict_to_peft": "formats",
    "lora_scale": "scale",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'torchdiffusion.loaders' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
