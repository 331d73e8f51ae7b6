"""``StableDiffusionLoraLoaderMixin``: LoRA files on a Stable Diffusion pipeline (its ``unet`` and
``text_encoder``), with Diffusers' method names and file layout.

``load_lora_weights`` reads Diffusers', PEFT's and kohya's layouts (see :mod:`torchdiffusion.loaders.formats`),
all-or-nothing; ``save_lora_weights`` writes ``pytorch_lora_weights.safetensors`` with the keys it is given,
prefixed ``unet.`` / ``text_encoder.``. ``set_adapters``, ``fuse_lora``, ``unload_lora_weights``... act on every
component that holds the adapters (the text encoder is a transformers model: it is handled through peft directly).
The per-call scale ``pipe(..., cross_attention_kwargs={"scale": s})`` reaches the UNet and the text encoder.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from . import peft_utils as pu
from .formats import write_lora_file
from .peft_model import _names, expand_weights, read_kwargs

__all__ = ["StableDiffusionLoraLoaderMixin"]


def _layers(layers: Any, argument: str) -> dict[str, torch.Tensor]:
    state = layers.state_dict() if isinstance(layers, nn.Module) else layers
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise TypeError(f"{argument} must be a dict of str -> tensor (or an nn.Module), got {type(layers).__name__}")
    return state


class StableDiffusionLoraLoaderMixin:
    """LoRA loading, saving, mixing and fusing for pipelines with ``unet`` and ``text_encoder`` components."""

    _lora_loadable_modules = ["unet", "text_encoder"]
    unet_name = "unet"
    text_encoder_name = "text_encoder"

    def _lora_models(self) -> dict[str, nn.Module | None]:
        return {name: getattr(self, name, None) for name in self._lora_loadable_modules}

    def _components(self, components: Any, argument: str = "components") -> list[nn.Module]:
        if components is None:
            components = self._lora_loadable_modules
        names = _names(components, argument)
        bad = [c for c in names if c not in self._lora_loadable_modules]
        if bad:
            raise ValueError(f"{argument} has {bad}; LoRA components are {self._lora_loadable_modules}")
        return [m for c in names if (m := getattr(self, c, None)) is not None]

    @property
    def lora_scale(self) -> float:
        return 1.0

    # ---- files -------------------------------------------------------------------------------------------------
    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: Any, **kwargs: Any):
        """The raw LoRA state dict of a file / folder / Hub id / dict and its ``network_alphas`` (kohya's
        ``.alpha`` values, or None), as Diffusers returns them (``return_lora_metadata=True`` adds the metadata)."""
        from .formats import read_lora_state_dict

        with_metadata = kwargs.pop("return_lora_metadata", False)
        kwargs.pop("unet_config", None)
        state, metadata = read_lora_state_dict(pretrained_model_name_or_path_or_dict, **read_kwargs(kwargs))
        alphas = {k: float(v.reshape(()).item()) for k, v in state.items() if k.endswith(".alpha")} or None
        state = {k: v for k, v in state.items() if not k.endswith(".alpha")}
        return (state, alphas, metadata) if with_metadata else (state, alphas)

    def load_lora_weights(
        self, pretrained_model_name_or_path_or_dict: Any, adapter_name: str | None = None, **kwargs: Any
    ) -> None:
        """Load a LoRA (file, folder, Hub id or state dict) into ``unet`` and ``text_encoder`` as adapter
        ``adapter_name`` (default ``default_<n>``), which becomes the active adapter.

        Options: ``weight_name`` (file in the folder / repo), ``subfolder``, ``use_safetensors``, the Hub options.
        All-or-nothing: keys or shapes that do not fit raise ValueError naming them, and the pipeline is left
        exactly as it was. ``.bin`` files are read with ``torch.load(weights_only=True)``.
        """
        from .formats import read_lora_state_dict
        from .loading import load_lora

        if kwargs.pop("hotswap", False):
            raise ValueError("hotswap=True is not supported; load under a new adapter_name instead")
        kwargs.pop("low_cpu_mem_usage", None)
        state, metadata = read_lora_state_dict(pretrained_model_name_or_path_or_dict, **read_kwargs(kwargs))
        load_lora(self._lora_models(), state, metadata, adapter_name, self.unet_name)

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        unet_lora_layers: dict[str, torch.Tensor] | nn.Module | None = None,
        text_encoder_lora_layers: dict[str, torch.Tensor] | nn.Module | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Any = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata: dict[str, Any] | None = None,
        text_encoder_lora_adapter_metadata: dict[str, Any] | None = None,
    ) -> None:
        """Write the given LoRA layers (e.g. ``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))``)
        as ``save_directory/pytorch_lora_weights.safetensors``, keys prefixed ``unet.`` / ``text_encoder.``; the
        adapter metadata dicts (``LoraConfig.to_dict()``) go into the header, prefixed the same way."""
        state: dict[str, torch.Tensor] = {}
        metadata: dict[str, Any] = {}
        parts = (
            (cls.unet_name, unet_lora_layers, unet_lora_adapter_metadata, "unet_lora_layers"),
            (cls.text_encoder_name, text_encoder_lora_layers, text_encoder_lora_adapter_metadata,
             "text_encoder_lora_layers"),
        )  # fmt: skip
        for prefix, layers, meta, argument in parts:
            if layers:
                state.update({f"{prefix}.{k}": v for k, v in _layers(layers, argument).items()})
            if meta is not None and not isinstance(meta, dict):
                raise TypeError(f"{argument.replace('layers', 'adapter_metadata')} must be a dict or None")
            if layers and meta:
                metadata.update({f"{prefix}.{k}": v for k, v in meta.items()})
        if not state:
            raise ValueError("pass unet_lora_layers and/or text_encoder_lora_layers (both are empty or None)")
        if is_main_process:
            write_lora_file(state, save_directory, weight_name, safe_serialization, metadata, save_function)

    # ---- adapters ----------------------------------------------------------------------------------------------
    def get_list_adapters(self) -> dict[str, list[str]]:
        """``{component: [adapter names]}`` for the components holding adapters."""
        return {c: names for c, m in self._lora_models().items() if (names := pu.adapter_names(m))}

    def get_active_adapters(self) -> list[str]:
        for model in self._lora_models().values():
            if model is not None and (active := pu.active_adapters(model)):
                return active
        return []

    def _known(self, names: list[str], argument: str) -> None:
        loaded = {n for names_ in self.get_list_adapters().values() for n in names_}
        missing = [n for n in names if n not in loaded]
        if missing:
            raise ValueError(f"{argument}: no adapter named {missing}; loaded: {sorted(loaded)}")

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: Any = None) -> None:
        """Activate ``adapter_names`` with ``adapter_weights``: one number for all, one per adapter, or per adapter a
        dict ``{component: weight}`` (None = 1.0). An adapter's scale is weight * alpha / rank."""
        names = _names(adapter_names, "adapter_names")
        self._known(names, "adapter_names")
        values = adapter_weights if isinstance(adapter_weights, (list, tuple)) else [adapter_weights] * len(names)
        if len(values) != len(names):
            raise ValueError(f"adapter_weights has {len(values)} entries for {len(names)} adapters")
        for component, model in self._lora_models().items():
            if model is None or not pu.adapter_names(model):
                continue
            per = []
            for v in values:
                if isinstance(v, dict):
                    bad = [k for k in v if k not in self._lora_loadable_modules]
                    if bad:
                        raise ValueError(f"adapter_weights names unknown components {bad}")
                    v = v.get(component)
                per.append(v)
            pu.set_active_adapters(model, names, expand_weights(names, per, "adapter_weights"))

    def disable_lora(self) -> None:
        for model in self._components(None):
            pu.enable_adapters(model, False)

    def enable_lora(self) -> None:
        for model in self._components(None):
            pu.enable_adapters(model, True)

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        names = _names(adapter_names, "adapter_names")
        self._known(names, "adapter_names")
        for model in self._components(None):
            pu.delete_adapters(model, names)

    def fuse_lora(
        self,
        components: list[str] | None = None,
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Merge the active (or listed) adapters into the weights of ``components`` (default: all), times
        ``lora_scale``; :meth:`unfuse_lora` takes them out again."""
        from .scale import check_scale

        if kwargs:
            raise TypeError(f"fuse_lora got unexpected keyword argument(s) {sorted(kwargs)}")
        check_scale(lora_scale, "lora_scale")
        if adapter_names is not None:
            self._known(_names(adapter_names, "adapter_names"), "adapter_names")
        for model in self._components(components):
            pu.fuse(model, lora_scale, safe_fusing, adapter_names)

    def unfuse_lora(self, components: list[str] | None = None, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"unfuse_lora got unexpected keyword argument(s) {sorted(kwargs)}")
        for model in self._components(components):
            pu.unfuse(model)

    @property
    def fused_loras(self) -> set[str]:
        return {n for m in self._components(None) for _, layer in pu.tuner_layers(m) for n in layer.merged_adapters}

    @property
    def num_fused_loras(self) -> int:
        return len(self.fused_loras)

    def unload_lora_weights(self) -> None:
        """Remove every LoRA layer from the components (fused weights stay fused)."""
        for model in self._components(None):
            pu.unload(model)
