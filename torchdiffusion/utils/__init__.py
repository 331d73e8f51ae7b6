"""Utilities: image conversion, outputs, random tensors; the LoRA key converters of ``diffusers.utils``."""

from __future__ import annotations

from typing import Any

_LORA = ("convert_state_dict_to_diffusers", "convert_state_dict_to_kohya", "convert_state_dict_to_peft")


def __getattr__(name: str) -> Any:
    if name in _LORA:
        from ..loaders import formats

        return getattr(formats, name)
    raise AttributeError(f"module 'torchdiffusion.utils' has no attribute {name!r}")
