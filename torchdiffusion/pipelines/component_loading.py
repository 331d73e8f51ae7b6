"""Loading and saving one pipeline component: the allow-list, per-component dtypes and weight variants.

``model_index.json`` names each component ``[library, class_name]``. Only classes of this package and a fixed set
of ``transformers`` classes are ever built. A ``dtype`` dict gives each component its own dtype (``"default"`` for
the others, float32 when absent, as Diffusers). A ``variant`` (e.g. ``"fp16"``) is loaded for the components that
have its files and the plain files elsewhere; a folder where no component has it is a ``ValueError``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..hub import check_plain_name, try_resolve_file
from ..models.modeling import ModelMixin
from ..weights import BIN_EXT, SAFE_EXT, index_name, weights_name

# transformers classes a pipeline folder may name (text encoders, tokenizers, image processors).
TRANSFORMERS_ALLOWED = frozenset(
    {
        "CLIPTextModel",
        "CLIPTextModelWithProjection",
        "CLIPTokenizer",
        "CLIPTokenizerFast",
        "CLIPVisionModelWithProjection",
        "CLIPImageProcessor",
        "CLIPImageProcessorFast",
        "CLIPImageProcessorPil",
        "CLIPFeatureExtractor",
        "T5EncoderModel",
        "T5Tokenizer",
        "T5TokenizerFast",
    }
)
# "stable_diffusion": the library Diffusers writes for StableDiffusionSafetyChecker (its pipeline module).
OUR_LIBRARIES = ("diffusers", "torchdiffusion", "stable_diffusion")


def component_dtype(dtype: Any, name: str) -> torch.dtype | None:
    """The dtype for component ``name`` from a pipeline's (resolved) ``dtype``: one dtype for all, or a dict by
    component name with ``"default"`` for the rest (float32 when the dict has no default, as Diffusers)."""
    if isinstance(dtype, dict):
        return dtype.get(name, dtype.get("default", torch.float32))
    return dtype


def check_dtype_keys(dtype: Any, names: Iterable[str]) -> None:
    """Warn about keys of a ``dtype`` dict that name no component (Diffusers ignores them silently)."""
    if isinstance(dtype, dict):
        stray = sorted(k for k in dtype if k != "default" and k not in set(names))
        if stray:
            warnings.warn(f"dtype names {stray}, which are not components of this pipeline", stacklevel=3)


def _variant_files(kind: str, variant: str) -> list[str]:
    if kind == "diffusers":
        return [f(ext, variant) for ext in (SAFE_EXT, BIN_EXT) for f in (weights_name, index_name)]
    return [  # transformers' names
        f"model.{variant}.safetensors",
        f"model.safetensors.index.{variant}.json",
        f"pytorch_model.{variant}.bin",
        f"pytorch_model.bin.index.{variant}.json",
    ]


def has_variant(root: Any, name: str, kind: str, variant: str, hub_kwargs: dict) -> bool:
    """Whether component ``name`` (``kind`` "diffusers" or "transformers") has weight files of ``variant``."""
    return any(try_resolve_file(root, f, name, **hub_kwargs) is not None for f in _variant_files(kind, variant))


def component_kind(entry: Any, lookup: Callable[[str], type | None]) -> str | None:
    """ "diffusers" (our models), "transformers" (its models) or None (no weights: schedulers, tokenizers...)."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        return None
    library, class_name = entry
    if library in OUR_LIBRARIES:
        cls = lookup(class_name)
        if cls is None or not issubclass(cls, ModelMixin):
            return None
        return getattr(cls, "_weights_layout", "diffusers")
    if library == "transformers" and class_name in TRANSFORMERS_ALLOWED:
        return "transformers" if "Model" in class_name else None
    return None


def load_component(
    root: Any,
    name: str,
    entry: Any,
    dtype: torch.dtype | None,
    variant: str | None,
    use_safetensors: bool | None,
    hub_kwargs: dict,
    lookup: Callable[[str], type | None],
) -> Any:
    """Build component ``name`` of the pipeline folder ``root`` from its ``model_index.json`` ``entry``;
    ``lookup(class_name)`` gives our allow-listed class or None."""
    check_plain_name(name, "component name in model_index.json")
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise ValueError(f"model_index.json entry for {name!r} must be [library, class_name], got {entry!r}")
    library, class_name = entry
    if library in OUR_LIBRARIES:
        component_cls = lookup(class_name)
        if component_cls is None:
            raise ValueError(f"model_index.json component {name!r} names {library}.{class_name}, which is not allowed")
        if issubclass(component_cls, ModelMixin):
            return component_cls.from_pretrained(
                root, subfolder=name, dtype=dtype, variant=variant, use_safetensors=use_safetensors, **hub_kwargs
            )
        return component_cls.from_pretrained(root, subfolder=name, **hub_kwargs)
    if library == "transformers" and class_name in TRANSFORMERS_ALLOWED:
        import transformers

        if class_name == "CLIPFeatureExtractor" and not hasattr(transformers, class_name):
            class_name = "CLIPImageProcessor"  # old SD folders; transformers 5 dropped the alias
        component_cls = getattr(transformers, class_name)
        options: dict[str, Any] = {"subfolder": name}
        options.update({k: v for k, v in hub_kwargs.items() if v is not None})
        if issubclass(component_cls, torch.nn.Module):
            if dtype is not None:  # transformers 5 renamed torch_dtype= to dtype= (the old name warns)
                major = int(transformers.__version__.split(".")[0])
                options["dtype" if major >= 5 else "torch_dtype"] = dtype
            if use_safetensors is not None:
                options["use_safetensors"] = use_safetensors
            if variant is not None:
                options["variant"] = variant
        return component_cls.from_pretrained(os.fspath(root), **options)
    raise ValueError(
        f"model_index.json component {name!r} names {library}.{class_name}; only torchdiffusion classes and "
        f"transformers {sorted(TRANSFORMERS_ALLOWED)} may be loaded"
    )


def save_component(
    component: Any, target: str, safe_serialization: bool, variant: str | None, max_shard_size: Any
) -> None:
    """Write one component into its folder ``target``: our models and transformers models with the weight
    options (``variant`` gives ``diffusion_pytorch_model.<variant>.safetensors`` / ``model.<variant>.safetensors``),
    everything else (schedulers, tokenizers, image processors) with its own ``save_pretrained``."""
    if isinstance(component, torch.nn.Module) and hasattr(component, "save_pretrained"):
        options: dict[str, Any] = {"safe_serialization": safe_serialization, "variant": variant}
        if max_shard_size is not None:
            options["max_shard_size"] = max_shard_size
        component.save_pretrained(target, **options)
    elif hasattr(component, "save_pretrained"):
        component.save_pretrained(target)
    else:
        raise TypeError(f"component {os.path.basename(target)!r} ({type(component).__name__}) cannot be saved")
