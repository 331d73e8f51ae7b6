"""Reading and writing model weights in Diffusers' folder format.

Files, in the order a loader looks for them (``<v>`` is the variant, e.g. ``fp16``):
``diffusion_pytorch_model[.<v>].safetensors``, its shard index
``diffusion_pytorch_model.safetensors.index[.<v>].json`` (shards named
``diffusion_pytorch_model[.<v>]-00001-of-00002.safetensors``), then the same with ``.bin`` (read with
``torch.load(weights_only=True)`` only). Old attention key names are renamed on load.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .hub import HUB_KWARGS, check_plain_name, try_resolve_file
from .utils.json_files import read_json

WEIGHTS_STEM = "diffusion_pytorch_model"
SAFE_EXT, BIN_EXT = "safetensors", "bin"
_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")


def weights_name(ext: str, variant: str | None = None) -> str:
    """``diffusion_pytorch_model[.variant].<ext>``."""
    return f"{WEIGHTS_STEM}.{variant}.{ext}" if variant else f"{WEIGHTS_STEM}.{ext}"


def index_name(ext: str, variant: str | None = None) -> str:
    """``diffusion_pytorch_model.<ext>.index[.variant].json`` (Diffusers puts the variant before ``.json``)."""
    return f"{WEIGHTS_STEM}.{ext}.index.{variant}.json" if variant else f"{WEIGHTS_STEM}.{ext}.index.json"


# ---- reading -----------------------------------------------------------------------------------------------


def read_state_file(path: str) -> dict[str, torch.Tensor]:
    """Tensors of one ``.safetensors`` or ``.bin`` file. A broken file gives an error naming it."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise OSError(f"cannot read weights file {path}: {e} (truncated or not a safetensors file?)") from e
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise OSError(f"cannot read weights file {path} with weights_only=True: {e}") from e
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise OSError(f"weights file {path} does not hold a flat dict of tensors")
    return dict(data)


def find_weights(
    path_or_id: str | os.PathLike,
    subfolder: str | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    **hub_kwargs: Any,
) -> list[str]:
    """Local paths of the weight files of a model folder (one file, or every shard of an index)."""
    if variant is not None:
        check_plain_name(variant, "variant")
    exts = [SAFE_EXT] if use_safetensors else [SAFE_EXT, BIN_EXT]
    if use_safetensors is False:
        exts = [BIN_EXT]
    tried: list[str] = []
    for ext in exts:
        single = weights_name(ext, variant)
        tried.append(single)
        path = try_resolve_file(path_or_id, single, subfolder, **hub_kwargs)
        if path is not None:
            return [path]
        index = index_name(ext, variant)
        tried.append(index)
        index_path = try_resolve_file(path_or_id, index, subfolder, **hub_kwargs)
        if index_path is not None:
            return _shards_from_index(path_or_id, index_path, subfolder, ext, **hub_kwargs)
    where = os.fspath(path_or_id) + (f"/{subfolder}" if subfolder else "")
    hint = ""
    if variant is None and any(
        try_resolve_file(path_or_id, weights_name(ext, "fp16"), subfolder, **hub_kwargs) for ext in exts
    ):
        hint = " (an fp16 variant exists: pass variant='fp16')"
    raise FileNotFoundError(f"no weights in {where}: looked for {', '.join(tried)}{hint}")


def _shards_from_index(path_or_id, index_path: str, subfolder, ext: str, **hub_kwargs) -> list[str]:
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path} has no 'weight_map' object")
    paths = []
    for name in sorted(set(weight_map.values())):
        check_plain_name(name, f"shard file named in {os.path.basename(index_path)}")
        if not name.endswith("." + ext):
            raise ValueError(f"shard {name!r} in {index_path} must end with .{ext}")
        path = try_resolve_file(path_or_id, name, subfolder, **hub_kwargs)
        if path is None:
            raise FileNotFoundError(f"shard {name} listed in {index_path} is missing")
        paths.append(path)
    return paths


def rename_legacy_keys(state: dict[str, torch.Tensor], renames: Mapping[str, str], known: set[str]) -> dict:
    """Rename old key parts (``query`` -> ``to_q`` ...) where the old key is unknown and the new one is known."""
    if not renames:
        return state
    out = {}
    for key, value in state.items():
        if key not in known:
            new = ".".join(renames.get(part, part) for part in key.split("."))
            if new in known:
                key = new
        out[key] = value
    return out


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, ignore_mismatched_sizes=False):
    """Copy ``state`` into ``model`` strictly: missing, unexpected or mis-shaped keys raise ``ValueError``."""
    expected = model.state_dict()
    state = rename_legacy_keys(state, getattr(model, "_legacy_key_renames", {}), set(expected))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]

    def show(keys):
        return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

    problems = []
    if missing:
        problems.append(f"missing keys: {show(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {show(unexpected)}")
    if mismatched and not ignore_mismatched_sizes:
        shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in mismatched]
        problems.append(f"mismatched shapes: {show(shapes)}")
    if problems:
        raise ValueError(f"weights in {source} do not fit {type(model).__name__}: " + "; ".join(problems))
    if mismatched:
        state = {k: v for k, v in state.items() if k not in mismatched}
    # load_state_dict copies into the live parameters and buffers (casting dtype); writing into the tensors
    # that state_dict() returns would be lost when a state-dict hook hands out copies (e.g. channels-last weights).
    model.load_state_dict(state, strict=not mismatched)


# ---- the loader ModelMixin.from_pretrained uses ------------------------------------------------------------

def _one_dtype(value: Any, name: str) -> torch.dtype | None:
    """A torch.dtype, or None for None and "auto" (transformers' "as stored"; Diffusers loads it as float32, as
    we do). Anything else would be silently replaced by float32 in Diffusers: a ``TypeError`` here."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if value == "auto":
        return None
    raise TypeError(f"{name} must be a torch.dtype such as torch.float16 (or None / 'auto'), got {value!r}")


def resolve_dtype(dtype: Any = None, torch_dtype: Any = None, allow_dict: bool = False) -> Any:
    """The dtype asked for with ``dtype=`` (Diffusers' current name) or ``torch_dtype=`` (its older alias): a
    ``torch.dtype`` or None, or with ``allow_dict`` a ``{component: dtype}`` dict (``"default"`` for the rest).
    Passing both with different values is a ``ValueError``."""
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"pass dtype or torch_dtype (one name for one thing), not both: {dtype} vs {torch_dtype}")
    name = "dtype" if dtype is not None else "torch_dtype"
    value = dtype if dtype is not None else torch_dtype
    if isinstance(value, dict):
        if not allow_dict:
            raise TypeError(f"{name} must be one torch.dtype here (a dict is for pipelines), got {value!r}")
        return {k: _one_dtype(v, f"{name}[{k!r}]") for k, v in value.items()}
    return _one_dtype(value, name)


_LOAD_OPTIONS = {
    "subfolder",
    "variant",
    "dtype",
    "torch_dtype",
    "use_safetensors",
    "low_cpu_mem_usage",
    "ignore_mismatched_sizes",
    "output_loading_info",
    "device_map",
}


def load_model(cls: type, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
    """Build ``cls`` from ``config.json`` and load its weights (see the module docstring for file names).

    Keyword arguments: ``subfolder``, ``variant``, ``dtype`` (or its alias ``torch_dtype``), ``use_safetensors``,
    hub options (``revision``, ``local_files_only``, ``cache_dir``, ``token``, ``force_download``, ``proxies``),
    ``ignore_mismatched_sizes``, ``device_map`` (``None``, ``"cpu"`` or a device), and config overrides
    (any constructor argument). The model is returned in eval mode; nothing is kept if loading fails.
    """
    hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k in _LOAD_OPTIONS}
    kwargs.pop("low_cpu_mem_usage", None)
    init_names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = [k for k in kwargs if k not in init_names]
    if unknown:
        raise TypeError(f"{cls.__name__}.from_pretrained got unexpected keyword argument(s): {', '.join(unknown)}")
    torch_dtype = resolve_dtype(opts.get("dtype"), opts.get("torch_dtype"))
    subfolder = opts.get("subfolder")

    config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
    files = find_weights(
        pretrained_model_name_or_path, subfolder, opts.get("variant"), opts.get("use_safetensors"), **hub_kwargs
    )
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(read_state_file(path))

    model = cls.from_config(config, **kwargs)
    load_state_into(model, state, os.path.dirname(files[0]), bool(opts.get("ignore_mismatched_sizes")))
    del state
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    device_map = opts.get("device_map")
    if device_map not in (None, "auto") and isinstance(device_map, (str, torch.device)):
        model = model.to(device_map)
    model.register_to_config(_name_or_path=os.fspath(pretrained_model_name_or_path))
    model.eval()
    if opts.get("output_loading_info"):
        return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return model


# ---- writing ------------------------------------------------------------------------------------------------


def parse_size(size: int | str) -> int:
    """``"10GB"`` / ``"500MB"`` / ``"5GiB"`` / bytes -> bytes."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    if not isinstance(size, str):
        raise TypeError(f"max_shard_size must be an int or a string like '10GB', got {type(size).__name__}")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", size.upper())
    if not m:
        raise ValueError(f"max_shard_size={size!r} is not a size like '10GB' or '500MB'")
    units = {
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    value = int(float(m.group(1)) * units[m.group(2) or "B"])
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def save_model(
    model: nn.Module,
    save_directory: str | os.PathLike,
    is_main_process: bool = True,
    safe_serialization: bool = True,
    variant: str | None = None,
    max_shard_size: int | str = "10GB",
    push_to_hub: bool = False,
    save_function: Callable[[dict[str, torch.Tensor], str], Any] | None = None,
    **kwargs: Any,
) -> None:
    """Write ``config.json`` and the weights of ``model`` into ``save_directory`` in Diffusers' format.

    ``save_function(state_dict, path)`` replaces ``torch.save`` for ``.bin`` files (``safe_serialization=False``),
    as accelerate scripts pass ``save_function=accelerator.save``; safetensors files are always written directly.
    """
    if save_function is not None and not callable(save_function):
        raise TypeError(f"save_function must be callable, got {type(save_function).__name__}")
    if kwargs:
        raise TypeError(f"save_pretrained got unexpected keyword argument(s): {', '.join(kwargs)}")
    if push_to_hub:
        raise NotImplementedError("push_to_hub: upload the saved folder with huggingface_hub.upload_folder")
    if os.path.isfile(save_directory):
        raise ValueError(f"save_directory={os.fspath(save_directory)!r} is a file; it must be a folder")
    if variant is not None:
        check_plain_name(variant, "variant")
    limit = parse_size(max_shard_size)
    if not is_main_process:
        return
    os.makedirs(save_directory, exist_ok=True)
    model.save_config(save_directory)

    ext = SAFE_EXT if safe_serialization else BIN_EXT
    state = _unshared(model.state_dict())
    shards = _split(state, limit)
    stem = weights_name(ext, variant)[: -len(ext) - 1]
    names = (
        [f"{stem}.{ext}"]
        if len(shards) == 1
        else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    )
    _remove_stale(save_directory, stem, ext, keep=set(names))
    for name, keys in zip(names, shards):
        part = {k: state[k] for k in keys}
        path = os.path.join(save_directory, name)
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(part, path, metadata={"format": "pt"})
        else:
            (save_function or torch.save)(part, path)
    index_path = os.path.join(save_directory, index_name(ext, variant))
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for name, keys in zip(names, shards) for k in keys},
        }
        with open(index_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    elif os.path.isfile(index_path):
        os.remove(index_path)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors with no two sharing storage (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for k, t in state.items():
        t = t.detach().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else id(t)
        out[k] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def _split(state: dict[str, torch.Tensor], limit: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def _remove_stale(folder, stem: str, ext: str, keep: set[str]) -> None:
    """Delete weight files of an earlier save of the same name (single file or shards) that we will not rewrite."""
    for name in os.listdir(folder):
        if name in keep or not name.endswith("." + ext) or not name.startswith(stem):
            continue
        rest = name[len(stem) : -len(ext) - 1]
        if rest == "" or _SHARD_SUFFIX.fullmatch(rest):
            os.remove(os.path.join(folder, name))
