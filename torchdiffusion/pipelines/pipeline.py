"""DiffusionPipeline: a set of named components (models, scheduler, tokenizer...) saved as a folder.

A pipeline folder holds ``model_index.json`` (``_class_name``, ``_diffusers_version`` and, for every component,
``[library, class_name]`` or ``[null, null]``) and one subfolder per component. Loading is allow-listed: only
classes of this package and a fixed set of ``transformers`` classes are ever built, and component names must be
plain folder names. No code is ever run from a file.
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..configuration import ConfigMixin
from ..hub import HUB_KWARGS, check_plain_name, resolve_file, split_push_kwargs, upload_saved_folder
from ..models.modeling import ModelMixin
from ..pretrained import resolve_embedded
from ..schedulers.scheduling_utils import SchedulerMixin
from ..utils.json_files import read_json
from ..utils.outputs import BaseOutput
from ..weights import resolve_dtype
from .component_loading import (
    check_dtype_keys,
    component_dtype,
    component_kind,
    has_variant,
    load_component,
    save_component,
)


@dataclass
class ImagePipelineOutput(BaseOutput):
    """``images``: a list of PIL images, a numpy array (batch, height, width, channels) in [0, 1], or a tensor
    (batch, channels, height, width) in [0, 1], depending on ``output_type``."""

    images: Any


def _our_class(name: str) -> type | None:
    """A public class of this package by name, if it is a model, scheduler or pipeline (the allow-list)."""
    import torchdiffusion

    if name not in torchdiffusion._LAZY:
        return None
    obj = getattr(torchdiffusion, name)
    base_types = (ModelMixin, DiffusionPipeline, SchedulerMixin)
    return obj if isinstance(obj, type) and issubclass(obj, base_types) else None


def _library_of(module: Any) -> tuple[str | None, str | None]:
    if module is None:
        return None, None
    root = type(module).__module__.split(".")[0]
    library = getattr(type(module), "_pipeline_library", "diffusers") if root == "torchdiffusion" else root
    return library, type(module).__name__


class DiffusionPipeline(ConfigMixin):
    """Base class of all pipelines. Subclasses call ``self.register_modules(name=obj, ...)`` in ``__init__``."""

    config_name = "model_index.json"
    _optional_components: list[str] = []

    # ---- components ------------------------------------------------------------------------------------
    def register_modules(self, **modules: Any) -> None:
        """Attach components as attributes and record ``[library, class_name]`` for ``model_index.json``."""
        for name, module in modules.items():
            self.register_to_config(**{name: _library_of(module)})
            object.__setattr__(self, name, module)

    def __setattr__(self, name: str, value: Any) -> None:
        internal = self.__dict__.get("_internal_dict")
        if internal is not None and name in internal and isinstance(internal[name], (list, tuple)):
            self.register_to_config(**{name: _library_of(value)})
        object.__setattr__(self, name, value)

    @classmethod
    def _signature(cls) -> tuple[set[str], set[str]]:
        """(component names, other optional constructor arguments) from ``__init__``'s signature."""
        params = inspect.signature(cls.__init__).parameters
        names = {k for k, p in params.items() if k != "self" and p.kind == p.POSITIONAL_OR_KEYWORD}
        required = {k for k in names if params[k].default is inspect.Parameter.empty}
        components = required | (set(cls._optional_components) & names)
        return components, names - components

    @property
    def components(self) -> dict[str, Any]:
        """The components by name, ready for ``OtherPipeline(**pipe.components)``."""
        names, _ = self._signature()
        return {k: getattr(self, k, None) for k in sorted(names)}

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {k: v for k, v in self.components.items() if isinstance(v, torch.nn.Module)}

    # ---- device and dtype ------------------------------------------------------------------------------
    def to(self, *args: Any, **kwargs: Any) -> DiffusionPipeline:
        """Move every model component: ``pipe.to("cuda")``, ``pipe.to(torch.float16)``, ``pipe.to(device, dtype)``."""
        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"to() got unexpected keyword argument(s): {', '.join(kwargs)}")
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, (str, torch.device)):
                device = arg
            else:
                raise TypeError(f"to() takes a device and/or a torch.dtype, got {type(arg).__name__}")
        for module in self._modules().values():
            module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        for module in self._modules().values():
            for p in module.parameters():
                return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for module in self._modules().values():
            for p in module.parameters():
                if p.is_floating_point():
                    return p.dtype
        return torch.float32

    @property
    def _execution_device(self) -> torch.device:
        """Where the models run (Diffusers' name, used by custom callbacks and loops)."""
        return self.device

    # ---- memory savers (the pipeline-level names tutorials still call) ---------------------------------
    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        """Compute attention in slices to save memory: ``set_attention_slice(slice_size)`` on every model
        that has it ("auto": half the heads, "max": one head at a time, an int, or None to turn it off)."""
        for module in self._modules().values():
            if hasattr(module, "set_attention_slice"):
                module.set_attention_slice(slice_size)

    def disable_attention_slicing(self) -> None:
        self.enable_attention_slicing(None)

    def _vae_call(self, method: str) -> None:
        vae = getattr(self, "vae", None)
        if vae is None or not hasattr(vae, method):
            raise ValueError(f"{method.replace('_', ' ', 1)} needs a `vae` component that supports it")
        getattr(vae, method)()

    def enable_vae_slicing(self) -> None:
        """Decode a batch one image at a time (``vae.enable_slicing()``)."""
        self._vae_call("enable_slicing")

    def disable_vae_slicing(self) -> None:
        self._vae_call("disable_slicing")

    def enable_vae_tiling(self) -> None:
        """Encode/decode large images in overlapping tiles (``vae.enable_tiling()``)."""
        self._vae_call("enable_tiling")

    def disable_vae_tiling(self) -> None:
        self._vae_call("disable_tiling")

    # ---- progress bar ----------------------------------------------------------------------------------
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options for the tqdm progress bar of every call (e.g. ``disable=True``)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable=None, total: int | None = None):
        from tqdm.auto import tqdm

        config = dict(getattr(self, "_progress_bar_config", {}))
        if iterable is not None:
            return tqdm(iterable, **config)
        return tqdm(total=total, **config)

    # ---- saving ----------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write ``model_index.json`` and every component into its own subfolder.

        ``push_to_hub=True`` then uploads the folder (with a ``README.md`` model card if the repo has none);
        upload options: ``repo_id`` (default: the folder's name), ``commit_message``, ``private``, ``token``,
        ``create_pr``.
        """
        push, kwargs = split_push_kwargs(kwargs)
        if kwargs:
            raise TypeError(f"save_pretrained got unexpected keyword argument(s): {', '.join(kwargs)}")
        self.save_config(save_directory)
        for name, component in self.components.items():
            if component is None:
                continue
            save_component(component, os.path.join(save_directory, name), safe_serialization, variant, max_shard_size)
        if push_to_hub:
            push.setdefault("repo_id", os.path.basename(os.path.normpath(os.fspath(save_directory))))
            upload_saved_folder(self, save_directory, **push)

    def _save_for_hub(self, folder: str, safe_serialization: bool = True, variant: str | None = None) -> None:
        """What ``push_to_hub`` uploads: this pipeline's ``save_pretrained`` folder with the weight options."""
        self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)

    # ---- loading ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> DiffusionPipeline:
        """Load a pipeline folder (or Hub id) written by Diffusers or torchdiffusion.

        ``DiffusionPipeline.from_pretrained`` builds the class named in ``model_index.json``; a subclass builds
        itself. Keyword arguments: component overrides (``scheduler=...``, ``safety_checker=None``),
        ``dtype`` or its alias ``torch_dtype`` (one dtype, or ``{"unet": torch.float16, "default": torch.float32}``:
        components the dict does not name load in its ``"default"``, else float32), ``variant`` (loaded where a
        component has its files; ``ValueError`` if none has), ``use_safetensors``, hub options (``revision``,
        ``local_files_only``, ``cache_dir``, ``token``).
        """
        pretrained_model_name_or_path = resolve_embedded(pretrained_model_name_or_path)  # e.g. EMBEDDED_MODEL
        hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
        dtype = resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None), allow_dict=True)
        variant = kwargs.pop("variant", None)
        use_safetensors = kwargs.pop("use_safetensors", None)
        for ignored in ("low_cpu_mem_usage", "device_map"):
            kwargs.pop(ignored, None)
        index = read_json(resolve_file(pretrained_model_name_or_path, cls.config_name, **hub_kwargs))

        pipeline_cls = cls
        if cls is DiffusionPipeline:
            name = index.get("_class_name")
            found = _our_class(name) if isinstance(name, str) else None
            if found is None or not issubclass(found, DiffusionPipeline):
                raise ValueError(f"model_index.json names pipeline class {name!r}: not a torchdiffusion pipeline")
            pipeline_cls = found
        names, extra_args = pipeline_cls._signature()
        unknown = [k for k in kwargs if k not in names and k not in extra_args]
        if unknown:  # Diffusers ignores these with a warning; tutorials rely on that, so we do the same
            warnings.warn(
                f"{pipeline_cls.__name__}.from_pretrained ignores keyword argument(s) it does not take: {unknown}; "
                f"components are {sorted(names)}",
                stacklevel=2,
            )
            for k in unknown:
                kwargs.pop(k)

        check_dtype_keys(dtype, names)
        variants = _component_variants(pretrained_model_name_or_path, index, names, kwargs, variant, hub_kwargs)
        init: dict[str, Any] = {}
        for name in sorted(names):
            if name in kwargs:
                init[name] = kwargs.pop(name)
                continue
            entry = index.get(name)
            if entry is None or (isinstance(entry, (list, tuple)) and entry[0] is None):
                if name in pipeline_cls._optional_components:
                    init[name] = None
                    continue
                raise ValueError(f"model_index.json has no component {name!r}, which {pipeline_cls.__name__} needs")
            init[name] = load_component(
                pretrained_model_name_or_path,
                name,
                entry,
                component_dtype(dtype, name),
                variants.get(name),
                use_safetensors,
                hub_kwargs,
                _our_class,
            )
        for key in extra_args:
            if key in kwargs:
                init[key] = kwargs.pop(key)
            elif key in index and not isinstance(index[key], (list, tuple)):
                init[key] = index[key]
        pipe = pipeline_cls(**init)
        pipe.register_to_config(_name_or_path=os.fspath(pretrained_model_name_or_path))
        return pipe

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for name, component in self.components.items():
            desc = "None" if component is None else type(component).__name__
            if isinstance(component, torch.nn.Module):
                n = sum(p.numel() for p in component.parameters())
                desc += f" ({n / 1e6:.2f}M params, {self.dtype}, {self.device})"
            lines.append(f"  {name}: {desc}")
        lines.append(")")
        return "\n".join(lines)

    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> list:
        from ..utils.images import numpy_to_pil

        return numpy_to_pil(images)


def _component_variants(root: Any, index: dict, names: set[str], given: dict, variant: str | None, hub_kwargs: dict):
    """{component: variant} for the components (not passed in ``given``) that have ``variant``'s weight files; the
    others load their plain files. ``ValueError`` when a variant is asked for and no component has it."""
    if variant is None:
        return {}
    check_plain_name(variant, "variant")
    kinds = {n: component_kind(index.get(n), _our_class) for n in names if n not in given}
    found = {n: variant for n, kind in kinds.items() if kind and has_variant(root, n, kind, variant, hub_kwargs)}
    if not found:
        raise ValueError(
            f"variant={variant!r}: no component of {os.fspath(root)} has weight files for this variant (such as "
            f"diffusion_pytorch_model.{variant}.safetensors); load without variant, or save one with "
            f"save_pretrained(..., variant={variant!r})"
        )
    return found
