"""``PeftAdapterMixin``: LoRA adapters on a model, with Diffusers' method names (what training scripts call on a
``UNet2DConditionModel``): ``add_adapter(LoraConfig(...))``, ``set_adapter(s)``, ``enable/disable_adapters``,
``active_adapters``, ``delete_adapters``, ``fuse_lora`` / ``unfuse_lora``, ``unload_lora``, ``load_lora_adapter`` /
``save_lora_adapter``. ``peft.utils.get_peft_model_state_dict(model)`` works on these models as on Diffusers'.

A call ``model(..., cross_attention_kwargs={"scale": s})`` scales every LoRA output by ``s`` for that call only,
in that thread only (see :mod:`torchdiffusion.loaders.scale`). Models without adapters pay one dict lookup.
"""

from __future__ import annotations

import os
from typing import Any

from . import peft_utils as pu
from .scale import ensure_scale_hooks, lora_scale

__all__ = ["PeftAdapterMixin"]


def _names(value: Any, argument: str) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{argument} must be an adapter name or a non-empty list of names, got {value!r}")
    return list(names)


class PeftAdapterMixin:
    """LoRA adapters through peft for an ``nn.Module`` model (mixed into ``ModelMixin``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "peft_config" not in self.__dict__:  # no adapters: the plain call
            return super().__call__(*args, **kwargs)
        options = kwargs.get("cross_attention_kwargs")
        scale = options.get("scale", 1.0) if isinstance(options, dict) else 1.0
        with lora_scale(scale, self):
            return super().__call__(*args, **kwargs)

    def _loaded(self) -> list[str]:
        names = pu.adapter_names(self)
        if not names:
            raise ValueError(f"{type(self).__name__} has no adapter loaded; add_adapter or load_lora_adapter first")
        return names

    def _check_known(self, names: list[str], argument: str) -> None:
        missing = [n for n in names if n not in self._loaded()]
        if missing:
            raise ValueError(f"{argument}: no adapter named {missing}; loaded: {self._loaded()}")

    def add_adapter(self, adapter_config: Any, adapter_name: str = "default") -> None:
        """Add a new (trainable) adapter described by a peft config (e.g. ``LoraConfig(r=4, lora_alpha=4,
        init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])``) and make it the
        active one. The base weights are frozen (peft's rule), the adapter's are trainable."""
        peft = pu.require_peft()
        from .loading import check_adapter_name

        if not isinstance(adapter_config, peft.PeftConfig):
            raise ValueError(f"adapter_config must be a peft PeftConfig (e.g. LoraConfig), got {adapter_config!r:.80}")
        check_adapter_name(adapter_name)
        if adapter_name in pu.adapter_names(self):
            raise ValueError(f"adapter_name={adapter_name!r} already exists; pick another name")
        adapter_config.base_model_name_or_path = None
        snapshot = pu.Snapshot(self)
        try:
            pu.inject(self, adapter_config, adapter_name)
        except BaseException:
            snapshot.restore(adapter_name)
            raise
        ensure_scale_hooks(self)
        self.set_adapter(adapter_name)

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Make ``adapter_name`` (or the listed adapters) the only active adapter(s)."""
        names = _names(adapter_name, "adapter_name")
        self._check_known(names, "adapter_name")
        pu.set_active_adapters(self, names)

    def set_adapters(self, adapter_names: str | list[str], weights: float | list[float | None] | None = None) -> None:
        """Activate ``adapter_names`` with per-adapter ``weights`` (scale = weight * alpha / rank; None = 1)."""
        names = _names(adapter_names, "adapter_names")
        self._check_known(names, "adapter_names")
        pu.set_active_adapters(self, names, expand_weights(names, weights, "weights"))

    def active_adapters(self) -> list[str]:
        self._loaded()
        return pu.active_adapters(self)

    def disable_adapters(self) -> None:
        self._loaded()
        pu.enable_adapters(self, False)

    def enable_adapters(self) -> None:
        self._loaded()
        pu.enable_adapters(self, True)

    disable_lora = disable_adapters
    enable_lora = enable_adapters

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        names = _names(adapter_names, "adapter_names")
        self._check_known(names, "adapter_names")
        pu.delete_adapters(self, names)

    def fuse_lora(self, lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names: list[str] | None = None):
        """Merge the active (or listed) adapters into the base weights, times ``lora_scale``."""
        from .scale import check_scale

        check_scale(lora_scale, "lora_scale")
        if adapter_names is not None:
            self._check_known(_names(adapter_names, "adapter_names"), "adapter_names")
        pu.fuse(self, lora_scale, safe_fusing, adapter_names)

    def unfuse_lora(self) -> None:
        pu.unfuse(self)

    def unload_lora(self) -> None:
        """Remove every adapter layer (fused weights stay in the base weights)."""
        pu.unload(self)

    def load_lora_adapter(
        self, pretrained_model_name_or_path_or_dict: Any, prefix: str | None = "transformer", **kwargs: Any
    ) -> None:
        """Load a LoRA file or state dict into this model. ``prefix``: keep only keys ``<prefix>.*`` (None: all keys,
        as written by :meth:`save_lora_adapter`). Other options: ``adapter_name``, ``weight_name``, ``subfolder`` and
        the Hub options. All-or-nothing: a key or shape that does not fit raises ValueError and changes nothing."""
        from .formats import read_lora_state_dict
        from .loading import load_lora

        adapter_name = kwargs.pop("adapter_name", None)
        kwargs.pop("low_cpu_mem_usage", None)
        network_alphas = kwargs.pop("network_alphas", None) or {}
        metadata = kwargs.pop("metadata", None)
        state, file_metadata = read_lora_state_dict(pretrained_model_name_or_path_or_dict, **read_kwargs(kwargs))
        if prefix is not None:
            kept = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
            if state and not kept:
                heads = sorted({k.split(".", 1)[0] for k in state})[:5]
                raise ValueError(f"prefix={prefix!r}: no key starts with it (keys start with {heads}); pass the "
                                 "right prefix, or prefix=None for keys without one")
            state = kept
        for key, value in network_alphas.items():  # {"<prefix>.<module>.alpha": alpha}, Diffusers' form
            if prefix is None or key.startswith(prefix + "."):
                state[key[len(prefix) + 1 :] if prefix else key] = torch_scalar(value)
        metadata = metadata or file_metadata
        if metadata and prefix is not None and any(k.startswith(prefix + ".") for k in metadata):
            metadata = {k[len(prefix) + 1 :]: v for k, v in metadata.items() if k.startswith(prefix + ".")}
        load_lora({"model": self}, state, metadata, adapter_name, "model", prefixed_metadata=False)

    def save_lora_adapter(
        self,
        save_directory: str | os.PathLike,
        adapter_name: str = "default",
        upcast_before_saving: bool = False,
        safe_serialization: bool = True,
        weight_name: str | None = None,
    ) -> None:
        """Write adapter ``adapter_name`` (PEFT key layout, config in the header) to ``save_directory``."""
        from .formats import write_lora_file

        self._check_known([adapter_name], "adapter_name")
        state = lora_state_dict(self, adapter_name)
        if upcast_before_saving:
            state = {k: v.float() for k, v in state.items()}
        metadata = self.peft_config[adapter_name].to_dict()
        write_lora_file(state, save_directory, weight_name, safe_serialization, metadata)


def torch_scalar(value: Any):
    import torch

    return value if isinstance(value, torch.Tensor) else torch.tensor(float(value))


def read_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The file options of a load call (``weight_name``, ``subfolder``, ``use_safetensors``, Hub options); any other
    keyword is a TypeError naming it."""
    from ..hub import HUB_KWARGS

    allowed = {"weight_name", "subfolder", "use_safetensors", *HUB_KWARGS}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; accepted: {sorted(allowed)}")
    return kwargs


def expand_weights(names: list[str], weights: Any, argument: str) -> list[float]:
    """One weight per adapter from a number, None or a list of numbers/None (None = 1.0)."""
    values = weights if isinstance(weights, (list, tuple)) else [weights] * len(names)
    if len(values) != len(names):
        raise ValueError(f"{argument} has {len(values)} entries for {len(names)} adapters")
    out = []
    for v in values:
        if v is None:
            v = 1.0
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{argument} must be numbers (or None), got {v!r}")
        out.append(float(v))
    return out


def lora_state_dict(model: Any, adapter_name: str) -> dict[str, Any]:
    """Adapter ``adapter_name``'s weights in PEFT's layout (``X.lora_A.weight`` / ``X.lora_B.weight``)."""
    out = {}
    for path, layer in pu.tuner_layers(model):
        if adapter_name in layer.lora_A:
            out[f"{path}.lora_A.weight"] = layer.lora_A[adapter_name].weight.detach()
            out[f"{path}.lora_B.weight"] = layer.lora_B[adapter_name].weight.detach()
    return out
