"""ModelMixin: the nn.Module base every model shares — from_pretrained / save_pretrained, dtype, device,
gradient checkpointing."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..hub import split_push_kwargs, upload_saved_folder
from ..loaders.peft_model import PeftAdapterMixin
from ..weights import load_model, save_model


class ModelMixin(PeftAdapterMixin, nn.Module):
    """Base class for models. Subclasses also inherit :class:`~torchdiffusion.configuration.ConfigMixin` and
    decorate ``__init__`` with ``@register_to_config``; the config is saved as ``config.json``."""

    config_name = "config.json"
    _supports_gradient_checkpointing = False
    # Old checkpoints' state-dict key fragments -> the current ones (applied on load, never on save).
    _legacy_key_renames: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules
        except AttributeError:
            internal = self.__dict__.get("_internal_dict")
            if internal is not None and name in internal and not name.startswith("_"):
                return internal[name]
            raise

    # ---- properties ------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the first parameter (or buffer); CPU for a model with neither."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the first floating-point parameter (or buffer); float32 for a model with neither."""
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        for t in self.buffers():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Number of parameters (``only_trainable`` counts those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    # ---- gradient checkpointing -------------------------------------------------------------------------
    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def enable_gradient_checkpointing(self) -> None:
        """Recompute block activations in the backward pass instead of storing them (saves memory)."""
        if not self._supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")
        self._set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        if self._supports_gradient_checkpointing:
            self._set_gradient_checkpointing(False)

    def _set_gradient_checkpointing(self, value: bool) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = value

    # ---- loading and saving (implemented in weights.py / hub.py) -----------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a model folder written by Diffusers or torchdiffusion (see ``weights.load_model``)."""
        return load_model(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``config.json`` and the weights (see :func:`torchdiffusion.weights.save_model`).

        ``push_to_hub=True`` then uploads the folder (with a ``README.md`` model card if the repo has none);
        upload options: ``repo_id`` (default: the folder's name), ``commit_message``, ``private``, ``token``,
        ``create_pr``.
        """
        push, kwargs = split_push_kwargs(kwargs)
        save_model(self, save_directory, **kwargs)
        if push_to_hub and kwargs.get("is_main_process", True):
            push.setdefault("repo_id", os.path.basename(os.path.normpath(os.fspath(save_directory))))
            upload_saved_folder(self, save_directory, **push)

    def _save_for_hub(self, folder: str, safe_serialization: bool = True, variant: str | None = None) -> None:
        """What ``push_to_hub`` uploads: this model's ``save_pretrained`` folder with the weight options."""
        self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)


def checkpointed(module: nn.Module, fn, *args: Any) -> Any:
    """Run ``fn(*args)``, recomputing it in backward when ``module.gradient_checkpointing`` is on and grads flow.

    Blocks that support checkpointing set ``self.gradient_checkpointing = False`` in ``__init__`` and call this.
    """
    if getattr(module, "gradient_checkpointing", False) and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
