"""The text-to-image model embedded in the package, and how it is made.

``StableDiffusionPipeline.from_pretrained("torchdiffusion/captioned-digits")`` (the name is
:data:`EMBEDDED_MODEL`) loads the folder shipped inside the package, offline; :func:`embedded_model_path` returns
that folder (a Diffusers Stable Diffusion folder: ``diffusers.StableDiffusionPipeline.from_pretrained(path)``
loads it too); :func:`embedded_lcm_lora_path` its LCM-LoRA (4-step sampling). :mod:`.recipe` retrains it from
scratch (``torchdiffusion pretrain-embedded``); :mod:`.tokenizer` writes its tokenizer files.
Importing this package imports nothing heavy.
"""

from __future__ import annotations

import os
from typing import Any

EMBEDDED_MODEL = "torchdiffusion/captioned-digits"
"""The documented name of the embedded model: ``from_pretrained`` reads it from the package, never the Hub."""
_FOLDERS = {EMBEDDED_MODEL: "captioned-digits"}


def embedded_model_path(name: str = EMBEDDED_MODEL) -> str:
    """The folder of the embedded model ``name`` inside the installed package. ``ValueError`` naming ``name``
    for another name; ``FileNotFoundError`` when this build ships no trained model."""
    if name not in _FOLDERS:
        raise ValueError(f"name must be one of {sorted(_FOLDERS)}, got {name!r}")
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), _FOLDERS[name])
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise FileNotFoundError(f"this build of torchdiffusion ships no trained {name!r} (no {folder}); "
                                "train it with `torchdiffusion pretrain-embedded --output-dir DIR`")  # fmt: skip
    return folder


def embedded_lcm_lora_path() -> str | None:
    """The folder of the embedded model's LCM-LoRA (``pytorch_lora_weights.safetensors`` and the matching
    ``scheduler_config.json`` of ``LCMScheduler``: 4 steps at ``guidance_scale=1``), or None when this build ships
    none. Made by ``torchdiffusion distill-lcm`` (the command is in its ``README.md``)."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "captioned-digits-lcm")
    return folder if os.path.isfile(os.path.join(folder, "pytorch_lora_weights.safetensors")) else None


def resolve_embedded(name_or_path: Any) -> Any:
    """``name_or_path`` itself, except the name of an embedded model (when no local folder has that name), which
    becomes its folder in the package."""
    if isinstance(name_or_path, str) and name_or_path in _FOLDERS and not os.path.isdir(name_or_path):
        return embedded_model_path(name_or_path)
    return name_or_path
