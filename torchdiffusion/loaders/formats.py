"""LoRA file layouts: reading a file (folder, Hub id or dict), splitting it per component and mapping every key
to a module path of the model, plus the converters Diffusers' training scripts use.

Layouts read (``X`` is a module path such as ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``):

* PEFT: ``X.lora_A.weight`` (down, ``(r, in)``) / ``X.lora_B.weight`` (up, ``(out, r)``);
* Diffusers: ``X.lora.down.weight`` / ``X.lora.up.weight``, text encoders ``X.lora_linear_layer.down.weight``;
* old Diffusers attention processors: ``...attn1.processor.to_q_lora.down.weight`` (``to_out_lora`` = ``to_out.0``;
  text encoders ``q_proj`` ... ``out_proj``);
* kohya: ``lora_unet_<X with _ for .>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, ``lora_te_...`` for
  the text encoder; the underscores are resolved against the model's own module names.

In the first three, keys carry the component as a prefix (``unet.``, ``text_encoder.``); a file with no such
prefix at all is read as a UNet file (Diffusers' oldest layout). ``X.alpha`` gives module X's alpha in any layout
(scale = alpha / rank; rank when absent).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "LORA_WEIGHT_NAME",
    "LORA_WEIGHT_NAME_SAFE",
    "convert_state_dict_to_diffusers",
    "convert_state_dict_to_kohya",
    "convert_state_dict_to_peft",
    "read_lora_state_dict",
    "split_lora_state_dict",
    "write_lora_file",
]

LORA_WEIGHT_NAME = "pytorch_lora_weights.bin"
LORA_WEIGHT_NAME_SAFE = "pytorch_lora_weights.safetensors"
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
_SKIPPED_FILE_WORDS = ("scheduler", "optimizer", "checkpoint")
_OLD_PROC = re.compile(r"(?:^|\.)(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_TEXT_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_SUFFIXES = (  # (key ending, part)
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".alpha", "alpha"),
)


# ---- reading and writing ---------------------------------------------------------------------------------------
def _pick_weight_name(folder: str, use_safetensors: bool | None) -> str:
    exts = (".safetensors",) if use_safetensors else (".bin",) if use_safetensors is False else (".safetensors", ".bin")
    for ext in exts:
        preferred = LORA_WEIGHT_NAME_SAFE if ext == ".safetensors" else LORA_WEIGHT_NAME
        if os.path.isfile(os.path.join(folder, preferred)):
            return preferred
        found = sorted(
            f for f in os.listdir(folder) if f.endswith(ext) and not any(w in f for w in _SKIPPED_FILE_WORDS)
        )
        if found:
            return found[0]
    raise FileNotFoundError(f"no LoRA weights file ({' or '.join(exts)}) in folder {folder}; pass weight_name")


def _metadata(path: str) -> dict[str, Any] | None:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        raw = (f.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the {LORA_ADAPTER_METADATA_KEY} header is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: the {LORA_ADAPTER_METADATA_KEY} header must be a JSON object")
    return value


def read_lora_state_dict(
    source: Any,
    weight_name: str | None = None,
    subfolder: str | None = None,
    use_safetensors: bool | None = None,
    **hub_kwargs: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors and adapter metadata (the ``lora_adapter_metadata`` safetensors header, or None) of a LoRA given as
    a state dict, a file, a folder or a Hub id. In a folder or repo without ``weight_name``, the file is
    ``pytorch_lora_weights.safetensors`` (or the folder's only other ``.safetensors``), then ``.bin``; ``.bin`` files
    are read with ``torch.load(weights_only=True)``."""
    name = "pretrained_model_name_or_path_or_dict"
    if isinstance(source, Mapping):
        bad = [k for k, v in source.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"{name}: a state dict must map str keys to tensors; bad entries: {bad[:5]}")
        return dict(source), None
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, a Hub id or a state dict, got {type(source).__name__}")
    if weight_name is not None and not isinstance(weight_name, str):
        raise TypeError(f"weight_name must be a string or None, got {type(weight_name).__name__}")
    from ..hub import check_plain_name, resolve_file, try_resolve_file
    from ..weights import read_state_file

    local = os.fspath(source)
    if os.path.isfile(local):
        path = local
    elif weight_name is not None:
        check_plain_name(weight_name, "weight_name")
        path = resolve_file(local, weight_name, subfolder, **hub_kwargs)
    elif os.path.isdir(local):
        folder = os.path.join(local, subfolder) if subfolder else local
        path = os.path.join(folder, _pick_weight_name(folder, use_safetensors))
    else:  # a Hub id: the standard names only (no listing of the repo)
        names = [LORA_WEIGHT_NAME_SAFE, LORA_WEIGHT_NAME]
        names = names[:1] if use_safetensors else names[1:] if use_safetensors is False else names
        path = next((p for n in names if (p := try_resolve_file(local, n, subfolder, **hub_kwargs))), None)
        if path is None:
            raise FileNotFoundError(f"none of {names} found in {local}; pass weight_name")
    state = read_state_file(path)
    return state, (_metadata(path) if path.endswith(".safetensors") else None)


def write_lora_file(
    state: dict[str, torch.Tensor],
    save_directory: str | os.PathLike,
    weight_name: str | None,
    safe_serialization: bool,
    metadata: dict[str, Any] | None = None,
    save_function: Any = None,
) -> str:
    """Write ``state`` to ``save_directory/weight_name`` (atomically: a temporary file, then a rename); the
    adapter ``metadata`` goes into the safetensors header as JSON. Returns the path."""
    from ..hub import check_plain_name

    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"save_directory must be a path, got {type(save_directory).__name__}")
    if os.path.isfile(save_directory):
        raise ValueError(f"save_directory={os.fspath(save_directory)!r} is a file; pass a folder")
    if weight_name is None:
        weight_name = LORA_WEIGHT_NAME_SAFE if safe_serialization else LORA_WEIGHT_NAME
    check_plain_name(weight_name, "weight_name")
    if metadata and not safe_serialization:
        raise ValueError("adapter metadata can only be written with safe_serialization=True")
    os.makedirs(save_directory, exist_ok=True)
    path = os.path.join(save_directory, weight_name)
    tmp = path + ".tmp"
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if save_function is not None:
        save_function(state, tmp)
    elif safe_serialization:
        from safetensors.torch import save_file

        header = {"format": "pt"}
        if metadata:
            plain = {k: sorted(v) if isinstance(v, set) else v for k, v in metadata.items()}
            header[LORA_ADAPTER_METADATA_KEY] = json.dumps(plain, indent=2, sort_keys=True, default=str)
        save_file(state, tmp, metadata=header)
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)
    return path


# ---- mapping keys to modules -----------------------------------------------------------------------------------
def _lora_targets(model: nn.Module) -> dict[str, nn.Module]:
    """Module paths that can carry a LoRA (Linear / Conv2d, or one already wrapped by peft) -> base layer."""
    out = {}
    for path, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, (nn.Linear, nn.Conv2d)):
            out[path] = base
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and ".lora_" not in f".{path}" and ".base_layer" not in path:
            out[path] = module
    return out


def _plain_key(key: str, text: bool) -> tuple[str, str] | None:
    """``(module path, part)`` of a PEFT / Diffusers / old-processor key (part: down | up | alpha), or None."""
    key = key.replace(".processor.", ".")
    if m := _OLD_PROC.search(key):
        proj = _TEXT_PROJ[m[1]] if text else ("to_out.0" if m[1] == "to_out" else m[1])
        head = key[: m.start()]
        return (f"{head}.{proj}" if head else proj), m[2]
    for ending, part in _SUFFIXES:
        if key.endswith(ending):
            return key[: -len(ending)], part
    return None


def split_lora_state_dict(
    state: dict[str, torch.Tensor], models: dict[str, nn.Module | None], default: str = "unet"
) -> dict[str, dict[str, dict[str, Any]]]:
    """Group a LoRA state dict by component and module: ``{component: {path: {"down", "up", "alpha"}}}``.

    ``models`` maps component names (the key prefixes) to the models; a file without any known prefix is read as
    ``default``'s. Raises ValueError naming every key that fits no component or no module, and every module that
    lacks its down or up weight.
    """
    kohya = bool(state) and all(k.startswith(tuple(KOHYA_PREFIXES)) for k in state)
    prefixed = any(k.split(".", 1)[0] in models for k in state)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    unknown: list[str] = []
    tables: dict[str, dict[str, str]] = {}
    for key, value in state.items():
        if kohya:
            head = next(p for p in KOHYA_PREFIXES if key.startswith(p))
            component, rest = KOHYA_PREFIXES[head], key[len(head) :]
        elif prefixed:
            component, _, rest = key.partition(".")
        else:
            component, rest = default, key
        model = models.get(component)
        parsed = None if model is None else _plain_key(rest, text=component != default)
        if parsed is not None and kohya:
            if component not in tables:
                tables[component] = _kohya_table(model)
            path = tables[component].get(parsed[0])
            parsed = None if path is None else (path, parsed[1])
        elif parsed is not None and not hasattr(model, "text_model") and parsed[0].startswith("text_model."):
            parsed = (parsed[0][len("text_model.") :], parsed[1])  # transformers 5 CLIPTextModel has no text_model
        if parsed is None:
            unknown.append(key)
            continue
        out.setdefault(component, {}).setdefault(parsed[0], {})[parsed[1]] = value
    if unknown:
        raise ValueError(
            f"LoRA keys that fit no component ({', '.join(m for m in models if models[m] is not None)}) or no "
            f"known layout: {_listing(unknown)}"
        )
    incomplete = [f"{c}.{p}" for c, mods in out.items() for p, part in mods.items() if not {"down", "up"} <= set(part)]
    if incomplete:
        raise ValueError(f"LoRA modules without both down and up weights: {_listing(incomplete)}")
    return out


def _kohya_table(model: nn.Module) -> dict[str, str]:
    """kohya's flattened names (``.`` -> ``_``) of ``model``'s LoRA-able modules -> their paths."""
    table = {}
    for path in _lora_targets(model):
        table[path.replace(".", "_")] = path
        if not hasattr(model, "text_model"):
            table["text_model_" + path.replace(".", "_")] = path
    return table


def _listing(keys: list[str], limit: int = 8) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_lora_shapes(component: str, model: nn.Module, modules: dict[str, dict[str, Any]]) -> list[str]:
    """Problems (each naming the module and shapes) of fitting ``modules`` (from :func:`split_lora_state_dict`) to
    ``model``: unknown modules, layers that are not Linear/Conv2d, and down/up shapes that do not fit."""
    targets = _lora_targets(model)
    problems = []
    for path, parts in modules.items():
        where = f"{component}.{path}"
        base = targets.get(path)
        if base is None:
            problems.append(f"{where}: no Linear or Conv2d layer of that name")
            continue
        down, up = parts["down"], parts["up"]
        r = down.shape[0] if down.ndim else 0
        if isinstance(base, nn.Linear):
            ok = down.ndim >= 2 and down.shape[1:].numel() == base.in_features and tuple(down.shape[2:]) in ((), (1, 1))
            ok = ok and up.ndim >= 2 and up.shape[0] == base.out_features and up.shape[1:].numel() == r
        else:
            kernel = tuple(base.kernel_size)
            in_ch = base.in_channels // base.groups
            ok = down.ndim in (2, 4) and down.shape[0] == r and down.shape[1] == in_ch
            ok = ok and (tuple(down.shape[2:]) == kernel or (down.ndim == 2 and kernel == (1, 1)))
            ok = ok and up.ndim in (2, 4) and up.shape[0] == base.out_channels and up.shape[1:].numel() == r
        if not ok or r == 0:
            problems.append(
                f"{where}: down {tuple(down.shape)} / up {tuple(up.shape)} do not fit {type(base).__name__} "
                f"{tuple(base.weight.shape)}"
            )
        alpha = parts.get("alpha")
        if alpha is not None and (alpha.numel() != 1 or not torch.isfinite(alpha).all()):
            problems.append(f"{where}.alpha: must be one finite number, got shape {tuple(alpha.shape)}")
    return problems


# ---- converters (Diffusers' utils) -----------------------------------------------------------------------------
_DIFFUSERS_ATTN = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


def convert_state_dict_to_diffusers(state_dict: dict[str, torch.Tensor], original_type: Any = None, **kwargs: Any):
    """PEFT-layout LoRA keys (``get_peft_model_state_dict``) -> Diffusers' layout: UNet attention projections
    ``X.lora.down/up.weight``, text-encoder projections ``X.lora_linear_layer.down/up.weight``, other modules as they
    are. ``adapter_name=`` drops that name from keys like ``X.lora_A.<name>.weight``. Old processor keys
    (``to_q_lora``) become ``q_proj.lora_linear_layer``. A dict already in Diffusers' layout is returned as is."""
    adapter = kwargs.pop("adapter_name", None)
    if kwargs:
        raise TypeError(f"convert_state_dict_to_diffusers got unexpected arguments {sorted(kwargs)}")
    out = {}
    for key, value in state_dict.items():
        if adapter is not None:
            key = key.replace(f".lora_A.{adapter}.", ".lora_A.").replace(f".lora_B.{adapter}.", ".lora_B.")
        key = key.replace(".processor.", ".")
        if m := _OLD_PROC.search(key):
            key = f"{key[: m.start()]}.{_TEXT_PROJ[m[1]]}.lora_linear_layer.{m[2]}.weight"
        for tag, part in ((".lora_A.", "down"), (".lora_B.", "up")):
            head, found, tail = key.partition(tag)
            if found and head.endswith(_DIFFUSERS_ATTN):
                key = f"{head}.lora.{part}.{tail}"
            elif found and head.endswith(_TEXT_ATTN):
                key = f"{head}.lora_linear_layer.{part}.{tail}"
        out[key] = value
    return out


def convert_state_dict_to_peft(state_dict: dict[str, torch.Tensor], original_type: Any = None, **kwargs: Any):
    """Diffusers / old-processor LoRA keys -> PEFT's ``X.lora_A.weight`` / ``X.lora_B.weight`` (text-encoder
    processor names become ``q_proj`` ... ``out_proj``); ``.alpha`` keys are kept."""
    out = {}
    for key, value in state_dict.items():
        parsed = _plain_key(key, text=".self_attn." in key or key.startswith("text_model."))
        if parsed is None or parsed[1] == "alpha":
            out[key] = value
        else:
            out[f"{parsed[0]}.lora_{'A' if parsed[1] == 'down' else 'B'}.weight"] = value
    return out


def convert_state_dict_to_kohya(state_dict: dict[str, torch.Tensor], original_type: Any = None, **kwargs: Any):
    """PEFT/Diffusers LoRA keys prefixed ``unet.`` / ``text_encoder.`` -> kohya's ``lora_unet_*`` / ``lora_te_*``
    with ``.lora_down.weight`` / ``.lora_up.weight``, plus an ``.alpha`` per module (= rank: scale 1, unless the
    dict already has one)."""
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        component, _, rest = key.partition(".")
        parsed = _plain_key(rest, text=component == "text_encoder") if component in prefixes else None
        if parsed is None:
            raise ValueError(f"state_dict key {key!r} is not a unet./text_encoder. LoRA key")
        name = prefixes[component] + parsed[0].replace(".", "_")
        suffix = {"down": ".lora_down.weight", "up": ".lora_up.weight", "alpha": ".alpha"}[parsed[1]]
        out[name + suffix] = value
        if parsed[1] == "down" and name + ".alpha" not in out:
            out[name + ".alpha"] = torch.tensor(float(value.shape[0]))
    return out
