"""Loading a LoRA into one or more models at once, all-or-nothing.

Every check runs before anything is changed (keys, module names, shapes, the adapter name); the injection itself
then runs under :class:`~torchdiffusion.loaders.peft_utils.Snapshot`s, so an unexpected failure in the second model
also takes the adapter back out of the first: the models end exactly as they were.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from .formats import check_lora_shapes, split_lora_state_dict
from .peft_utils import Snapshot, adapter_names, inject_lora, lora_config, require_peft

__all__ = ["check_adapter_name", "default_adapter_name", "load_lora"]


def check_adapter_name(name: Any, argument: str = "adapter_name") -> str:
    """A usable adapter name: a non-empty string without ``.`` (peft keys its layers by it)."""
    if not isinstance(name, str) or not name or "." in name or name.strip() != name:
        raise ValueError(f"{argument} must be a non-empty string without '.' or surrounding spaces, got {name!r}")
    return name


def default_adapter_name(models: list[nn.Module]) -> str:
    """``default_<n>`` (Diffusers' naming), the first n not in use by any of ``models``."""
    used = {n for m in models for n in adapter_names(m)}
    n = max((len(adapter_names(m)) for m in models), default=0)
    while f"default_{n}" in used:
        n += 1
    return f"default_{n}"


def _component_metadata(metadata: dict[str, Any] | None, component: str, prefixed: bool) -> dict[str, Any]:
    if not metadata:
        return {}
    if not prefixed:
        return dict(metadata)
    head = component + "."
    return {k[len(head) :]: v for k, v in metadata.items() if k.startswith(head)}


def _alpha(path: str, rank: int, parts: dict[str, Any], meta: dict[str, Any]) -> float:
    """Module ``path``'s alpha: its ``.alpha`` key, else the metadata's ``alpha_pattern`` / ``lora_alpha``, else the
    rank (scale 1). rsLoRA's alpha / sqrt(r) scale is expressed as an alpha for the plain alpha / r rule."""
    if "alpha" in parts:
        return float(parts["alpha"].reshape(()).item())
    alpha = meta.get("lora_alpha", rank)
    for pattern, value in (meta.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            alpha = value
            break
    alpha = float(alpha)
    return alpha * math.sqrt(rank) if meta.get("use_rslora") else alpha


def load_lora(
    models: dict[str, nn.Module | None],
    state: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None,
    adapter_name: str | None,
    default: str,
    prefixed_metadata: bool = True,
) -> str:
    """Add the LoRA in ``state`` (any layout of :mod:`~torchdiffusion.loaders.formats`) to ``models`` (component
    name -> model) as adapter ``adapter_name`` (``default_<n>`` when None); returns the name used.

    Raises ValueError, before changing anything, naming every key or module that does not fit; if peft fails
    later, everything done so far is undone and the error re-raised.
    """
    require_peft()
    present = [m for m in models.values() if m is not None]
    if adapter_name is None:
        adapter_name = default_adapter_name(present)
    check_adapter_name(adapter_name)
    for component, model in models.items():
        if model is not None and adapter_name in adapter_names(model):
            raise ValueError(f"adapter_name={adapter_name!r} is already in use in {component}; pick another name")
    grouped = split_lora_state_dict(state, models, default)
    problems = [p for c, mods in grouped.items() for p in check_lora_shapes(c, models[c], mods)]
    for component in grouped:
        meta = _component_metadata(metadata, component, prefixed_metadata)
        if meta.get("use_dora") or meta.get("lora_bias"):
            problems.append(f"{component}: DoRA / LoRA-bias adapters (metadata) are not supported")
    if problems:
        raise ValueError("the LoRA does not fit the model:\n  " + "\n  ".join(problems))
    if not grouped:
        raise ValueError("the LoRA state dict is empty")

    plans = []
    for component, modules in grouped.items():
        meta = _component_metadata(metadata, component, prefixed_metadata)
        ranks = {p: int(parts["down"].shape[0]) for p, parts in modules.items()}
        alphas = {p: _alpha(p, ranks[p], parts, meta) for p, parts in modules.items()}
        weights = {p: (parts["down"], parts["up"]) for p, parts in modules.items()}
        plans.append((models[component], weights, lora_config(ranks, alphas)))
    snapshots: list[Snapshot] = []
    try:
        for model, weights, config in plans:
            snapshots.append(Snapshot(model))
            inject_lora(model, adapter_name, weights, config)
    except BaseException:
        for snapshot in reversed(snapshots):
            snapshot.restore(adapter_name)
        raise
    return adapter_name
