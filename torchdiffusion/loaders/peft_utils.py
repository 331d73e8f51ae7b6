"""LoRA operations on any ``nn.Module`` (our models and transformers' text encoders alike), through ``peft``.

peft is imported only inside these functions. The adapters live in peft's layers (``lora_A`` / ``lora_B``
``ModuleDict``s keyed by adapter name); the model's ``peft_config`` dict maps each adapter name to its
``LoraConfig``. :func:`inject_lora` adds a whole adapter with given weights and undoes everything it did if any
step fails (all-or-nothing), :class:`Snapshot` is what makes that possible across several models.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .scale import ensure_scale_hooks

__all__ = [
    "Snapshot",
    "active_adapters",
    "adapter_names",
    "delete_adapters",
    "enable_adapters",
    "fuse",
    "inject_lora",
    "require_peft",
    "set_active_adapters",
    "tuner_layers",
    "unfuse",
    "unload",
]

PEFT_HINT = "LoRA needs the peft package: pip install 'torchdiffusion[lora]' (or pip install peft)"


def require_peft() -> Any:
    """The ``peft`` module, or an ImportError that says how to install it."""
    try:
        import peft
    except ImportError as e:  # pragma: no cover - peft is a test dependency
        raise ImportError(PEFT_HINT) from e
    return peft


def tuner_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(path, layer)`` of every peft adapter layer in ``model`` (none when peft was never imported)."""
    import sys

    if "peft" not in sys.modules:
        return iter(())
    from peft.tuners.tuners_utils import BaseTunerLayer

    return ((name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer))


def adapter_names(model: nn.Module | None) -> list[str]:
    """Names of the adapters loaded into ``model`` (its ``peft_config`` keys)."""
    config = getattr(model, "peft_config", None) if model is not None else None
    return list(config) if isinstance(config, dict) else []


def active_adapters(model: nn.Module) -> list[str]:
    """The active adapters of ``model``'s first adapter layer ([] without any)."""
    for _, layer in tuner_layers(model):
        return list(layer.active_adapters)
    return []


def clear_weight_caches(model: nn.Module) -> None:
    """Drop weights derived and cached by the fast layers (they key on the tensor's version, which peft's
    ``weight.data += delta`` merges do not bump)."""
    from ..models.layers.cpu_kernels import clear_weight_caches as clear

    clear(model)


def set_active_adapters(model: nn.Module, names: Sequence[str], weights: Sequence[float] | None = None) -> None:
    """Activate exactly ``names`` in every adapter layer; ``weights[i]`` sets adapter i's scaling to
    ``weights[i] * lora_alpha / r`` (peft's ``set_scale``)."""
    for _, layer in tuner_layers(model):
        layer.set_adapter(list(names))
        if weights is not None:
            for name, weight in zip(names, weights):
                layer.set_scale(name, weight)


def enable_adapters(model: nn.Module, enabled: bool) -> None:
    for _, layer in tuner_layers(model):
        layer.enable_adapters(enabled)


def delete_adapters(model: nn.Module, names: Sequence[str]) -> None:
    """Remove the adapters ``names`` (their layers and ``peft_config`` entries) from ``model``."""
    for _, layer in tuner_layers(model):
        for name in names:
            if name in layer.lora_A or name in getattr(layer, "r", {}):
                layer.delete_adapter(name)
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict):
        for name in names:
            config.pop(name, None)


def fuse(model: nn.Module, lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names=None) -> list[str]:
    """Merge the (given or active) adapters into the base weights, times ``lora_scale`` (which stays applied to
    the layers' scaling, as in Diffusers, so that :func:`unfuse` subtracts exactly what was added). Returns the
    names now merged."""
    merged: set[str] = set()
    for _, layer in tuner_layers(model):
        if lora_scale != 1.0:
            layer.scale_layer(lora_scale)
        layer.merge(safe_merge=safe_fusing, adapter_names=adapter_names)
        merged.update(layer.merged_adapters)
    clear_weight_caches(model)
    return sorted(merged)


def unfuse(model: nn.Module) -> None:
    for _, layer in tuner_layers(model):
        layer.unmerge()
    clear_weight_caches(model)


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, child, module)


def unload(model: nn.Module) -> None:
    """Put the base layers back in place of peft's (fused weights stay fused) and forget the adapters."""
    for path, layer in list(tuner_layers(model)):
        _replace(model, path, layer.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        model.__dict__.pop(attr, None)
    clear_weight_caches(model)


class Snapshot:
    """What adding an adapter may change in ``model``, recorded so :meth:`restore` can put it back: which
    layers are peft layers and their active/enabled adapters, ``peft_config``, and ``requires_grad`` flags."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = {
            path: (list(layer.active_adapters), layer.disable_adapters) for path, layer in tuner_layers(model)
        }
        self.config = dict(model.peft_config) if isinstance(getattr(model, "peft_config", None), dict) else None
        self.grads = [(p, p.requires_grad) for p in model.parameters()]

    def restore(self, adapter_name: str) -> None:
        """Remove ``adapter_name`` everywhere and restore the recorded state."""
        model = self.model
        for path, layer in list(tuner_layers(model)):
            if path not in self.layers:
                _replace(model, path, layer.get_base_layer())
                continue
            if adapter_name in layer.lora_A:
                with warnings.catch_warnings():  # "active adapter deleted": the actives are restored next
                    warnings.simplefilter("ignore", UserWarning)
                    layer.delete_adapter(adapter_name)
            active, disabled = self.layers[path]
            if active:
                layer.set_adapter(active)
            layer.enable_adapters(not disabled)
        if self.config is None:
            model.__dict__.pop("peft_config", None)
        else:
            model.peft_config = dict(self.config)
        for p, flag in self.grads:
            p.requires_grad_(flag)
        clear_weight_caches(model)


def _most_common(values: dict[str, float]) -> float:
    return Counter(values.values()).most_common(1)[0][0]


def lora_config(ranks: dict[str, int], alphas: dict[str, float]) -> Any:
    """A ``LoraConfig`` that targets exactly the module paths in ``ranks``, with each module's rank and alpha
    (the most common as defaults, the rest as exact-path patterns)."""
    peft = require_peft()
    r, alpha = _most_common(ranks), _most_common(alphas)
    return peft.LoraConfig(
        r=int(r),
        lora_alpha=alpha,
        target_modules=sorted(ranks),
        rank_pattern={re.escape(p): v for p, v in ranks.items() if v != r},
        alpha_pattern={re.escape(p): v for p, v in alphas.items() if v != alpha},
        init_lora_weights=False,
    )


def inject(model: nn.Module, config: Any, adapter_name: str) -> None:
    """peft's ``inject_adapter_in_model``, without its warning that a second adapter is being added (intended)."""
    peft = require_peft()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        peft.inject_adapter_in_model(config, model, adapter_name=adapter_name)


def inject_lora(model: nn.Module, adapter_name: str, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], config):
    """Add adapter ``adapter_name`` to ``model`` with ``config`` and set its ``(down, up)`` weights per module
    path (shapes already checked against the modules). On failure the caller restores a :class:`Snapshot`."""
    inject(model, config, adapter_name)
    with torch.no_grad():
        for path, (down, up) in weights.items():
            layer = model.get_submodule(path)
            a, b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
            a.copy_(down.reshape(a.shape))
            b.copy_(up.reshape(b.shape))
    ensure_scale_hooks(model)
