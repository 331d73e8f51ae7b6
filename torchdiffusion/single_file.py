"""``from_single_file``: Stable Diffusion models and pipelines from one original (CompVis / Stability "LDM")
checkpoint: a ``.safetensors`` file, or a ``.ckpt`` read with ``torch.load(weights_only=True)``, or its state dict.
Nothing is ever fetched from the network.

Configurations come from ``config=`` (a local folder in Diffusers' layout: a pipeline folder, or a model folder;
no weights needed), from ``original_config=`` (the original LDM YAML, e.g. ``v1-inference.yaml``: a local file or
its parsed dict; read with ``yaml.safe_load``), or are inferred from tensor shapes (see
:mod:`torchdiffusion.single_file_convert`); keyword overrides of config keys (``norm_num_groups=32``...) apply on
top. The tokenizer is not in such files: it comes
from ``tokenizer=``, ``config=`` or the local Hugging Face cache (``openai/clip-vit-large-patch14``).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .single_file_convert import (
    SD_SCHEDULER,
    _part,
    build_text_encoder,
    convert_unet_state_dict,
    convert_vae_state_dict,
    text_encoder_state_dict,
    unet_config_from_checkpoint,
    vae_config_from_checkpoint,
)
from .single_file_yaml import scheduler_config_from_original, unet_config_from_original, vae_config_from_original

_KINDS = {"UNet2DConditionModel": "unet", "AutoencoderKL": "vae"}
_IGNORED = (
    "local_files_only",
    "use_safetensors",
    "low_cpu_mem_usage",
    "cache_dir",
    "token",
    "revision",
    "force_download",
    "proxies",
    "device_map",
)
_CLIP_TOKENIZERS = {
    "clip": ("openai/clip-vit-large-patch14", None),
    "openclip": ("stabilityai/stable-diffusion-2", "tokenizer"),
}


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a local ``.safetensors`` / ``.ckpt`` / ``.pt`` / ``.bin`` file (``state_dict`` unwrapped)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained_model_link_or_path={path!r} is not a local file; from_single_file never downloads "
            "(fetch the file first, e.g. with huggingface_hub.hf_hub_download)"
        )
    if path.endswith(".safetensors"):
        from .weights import read_state_file

        return read_state_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise OSError(f"cannot read checkpoint {path} with torch.load(weights_only=True): {e}") from e
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise OSError(f"checkpoint {path} does not hold a dict of tensors")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _state(source: Any) -> dict[str, torch.Tensor]:
    if isinstance(source, dict):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"pretrained_model_link_or_path_or_dict must be a file path or a state dict, got {type(source).__name__}"
        )
    return load_checkpoint(source)


def read_original_config(original_config: str | os.PathLike | dict) -> dict[str, Any]:
    """The original LDM YAML config (``v1-inference.yaml``, ``v2-inference-v.yaml``...) as a dict.

    ``original_config`` is a local file path or an already parsed dict; URLs are refused (nothing is fetched).
    The file is read with ``yaml.safe_load`` (PyYAML).
    """
    if isinstance(original_config, dict):
        return original_config
    if not isinstance(original_config, (str, os.PathLike)):
        raise TypeError(
            f"original_config must be a local YAML file path or a dict, got {type(original_config).__name__}"
        )
    path = os.fspath(original_config)
    if "://" in path:
        raise ValueError(
            f"original_config={path!r} is a URL; from_single_file never downloads: fetch the YAML file first and "
            "pass its local path"
        )
    if not os.path.isfile(path):
        raise ValueError(f"original_config={path!r} is not an existing local YAML file")
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - PyYAML comes with huggingface_hub
        raise ImportError("original_config needs PyYAML: pip install pyyaml") from e
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"original_config={path!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"original_config={path!r} must hold a YAML mapping, got {type(data).__name__}")
    return data


def _check_kwargs(kwargs: dict) -> dict[str, Any] | None:
    """Drop hub options that do not apply to local files; return the parsed ``original_config`` (or None)."""
    for key in _IGNORED:
        kwargs.pop(key, None)
    original = kwargs.pop("original_config", None)
    legacy = kwargs.pop("original_config_file", None)  # Diffusers' older name
    if original is not None and legacy is not None:
        raise ValueError("pass original_config or original_config_file, not both")
    original = original if original is not None else legacy
    return read_original_config(original) if original is not None else None


def _config_folder(config: Any, subfolder: str | None, default_subfolder: str, file_name: str) -> str | None:
    """The local folder holding ``file_name`` for a component: ``config/subfolder``, ``config`` or
    ``config/default_subfolder``."""
    if config is None:
        return None
    if not isinstance(config, (str, os.PathLike)) or not os.path.isdir(config):
        raise ValueError(f"config={config!r} must be a local folder in Diffusers' layout (it is never fetched)")
    root = os.fspath(config)
    candidates = [os.path.join(root, subfolder)] if subfolder else [root, os.path.join(root, default_subfolder)]
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, file_name)):
            return folder
    raise ValueError(f"config={root!r} has no {file_name} (looked in {candidates})")


def load_model_from_single_file(
    cls: type,
    pretrained_model_link_or_path_or_dict: Any,
    config: str | os.PathLike | None = None,
    subfolder: str | None = None,
    torch_dtype: torch.dtype | None = None,
    **overrides: Any,
):
    """A ``UNet2DConditionModel`` or ``AutoencoderKL`` (``cls``) from an original checkpoint file or state dict.

    ``config``: a local Diffusers-layout folder; ``original_config=``: the LDM YAML (path or dict; not together
    with ``config``); neither: the config is inferred from shapes. Other keywords override config keys.
    """
    original = _check_kwargs(overrides)
    kind = next((_KINDS[b.__name__] for b in cls.__mro__ if b.__name__ in _KINDS), None)
    if kind is None:
        raise TypeError(f"from_single_file supports UNet2DConditionModel and AutoencoderKL, not {cls.__name__}")
    if original is not None and config is not None:
        raise ValueError("pass config (a Diffusers folder) or original_config (an LDM YAML), not both")
    sd = _part(_state(pretrained_model_link_or_path_or_dict), kind)
    folder = _config_folder(config, subfolder, kind, cls.config_name)
    if folder is not None:
        model_config = dict(cls.load_config(folder))
    else:
        model_config = unet_config_from_checkpoint(sd) if kind == "unet" else vae_config_from_checkpoint(sd)
        if original is not None:
            convert = unet_config_from_original if kind == "unet" else vae_config_from_original
            model_config = convert(original, model_config)
    model_config.update(overrides)
    if kind == "unet":
        converted = convert_unet_state_dict(sd, model_config)
    else:
        converted = convert_vae_state_dict(sd, len(model_config["block_out_channels"]))
    from .weights import load_state_into

    model = cls.from_config(model_config)
    source = (
        "the given state dict"
        if isinstance(pretrained_model_link_or_path_or_dict, dict)
        else os.fspath(pretrained_model_link_or_path_or_dict)
    )
    load_state_into(model, converted, source)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model.eval()


def _tokenizer(root: str | None, kind: str):
    from transformers import CLIPTokenizer

    if root is not None and os.path.isdir(os.path.join(root, "tokenizer")):
        source, options = os.path.join(root, "tokenizer"), {}
    else:
        source, sub = _CLIP_TOKENIZERS[kind]
        options = {"subfolder": sub} if sub else {}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=True, **options)
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is None or len(tokenizer) <= 256:  # transformers 5 builds an empty tokenizer from missing files
        raise ValueError(
            f"tokenizer: the checkpoint has none and {source} has no local tokenizer files; pass "
            "tokenizer=CLIPTokenizer.from_pretrained(<local folder>) or config=<a local SD pipeline folder>"
        )
    return tokenizer


def _scheduler(root: str | None, text_kind: str, unet, prediction_type: str | None, original: dict | None = None):
    import torchdiffusion

    from .utils.json_files import read_json

    if root is not None and os.path.isfile(os.path.join(root, "scheduler", "scheduler_config.json")):
        saved = read_json(os.path.join(root, "scheduler", "scheduler_config.json"))
        cls = (
            getattr(torchdiffusion, str(saved.get("_class_name")), None)
            if saved.get("_class_name") in torchdiffusion._LAZY
            else None
        )
        if cls is None or not hasattr(cls, "from_config"):
            raise ValueError(f"scheduler_config.json in {root} names {saved.get('_class_name')!r}, which is unknown")
        if prediction_type is not None:
            saved["prediction_type"] = prediction_type
        return cls.from_config(saved)
    if original is not None:  # the YAML says the schedule and the parameterization; v-prediction models use DDIM
        config = {**SD_SCHEDULER, **scheduler_config_from_original(original)}
        if prediction_type is not None:
            config["prediction_type"] = prediction_type
        v = config["prediction_type"] == "v_prediction"
        return (torchdiffusion.DDIMScheduler if v else torchdiffusion.PNDMScheduler).from_config(config)
    v2 = text_kind == "openclip" and unet.config.in_channels == 4  # SD 2.x 768: DDIM with v-prediction
    config = {**SD_SCHEDULER, "prediction_type": prediction_type or ("v_prediction" if v2 else "epsilon")}
    return (torchdiffusion.DDIMScheduler if v2 else torchdiffusion.PNDMScheduler).from_config(config)


def load_pipeline_from_single_file(
    cls: type,
    pretrained_model_link_or_path_or_dict: Any,
    config: str | os.PathLike | None = None,
    torch_dtype: torch.dtype | dict | None = None,
    prediction_type: str | None = None,
    **kwargs: Any,
):
    """A Stable Diffusion pipeline (``cls``) from one original checkpoint. Components passed as keyword arguments
    (``tokenizer=``, ``scheduler=``, ``vae=``...) are used as given; ``safety_checker`` defaults to None.
    ``original_config=`` (an LDM YAML path or dict, not together with ``config``) sets the UNet, VAE and scheduler
    configs (``timesteps``, ``linear_start``/``linear_end``, ``parameterization``)."""
    original = _check_kwargs(kwargs)
    if original is not None and config is not None:
        raise ValueError("pass config (a Diffusers folder) or original_config (an LDM YAML), not both")
    names, extra = cls._signature()
    unknown = [k for k in kwargs if k not in names and k not in extra]
    if unknown:
        raise TypeError(f"{cls.__name__}.from_single_file got unexpected keyword argument(s): {unknown}")
    state = _state(pretrained_model_link_or_path_or_dict)
    root = _config_folder(config, None, ".", "model_index.json") if config is not None else None

    def dtype_of(name: str):
        return torch_dtype.get(name, torch_dtype.get("default")) if isinstance(torch_dtype, dict) else torch_dtype

    import torchdiffusion

    parts: dict[str, Any] = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    parts.update(kwargs)
    for part, model_cls in (("unet", torchdiffusion.UNet2DConditionModel), ("vae", torchdiffusion.AutoencoderKL)):
        if part not in parts:
            parts[part] = load_model_from_single_file(
                model_cls, state, root, part if root else None, dtype_of(part), original_config=original
            )
    text_kind = text_encoder_state_dict(state)[1] if "text_encoder" not in parts or "tokenizer" not in parts else "clip"
    if "text_encoder" not in parts:
        te_dir = (
            os.path.join(root, "text_encoder") if root and os.path.isdir(os.path.join(root, "text_encoder")) else None
        )
        parts["text_encoder"] = build_text_encoder(state, te_dir, dtype_of("text_encoder"))
    if "tokenizer" not in parts:
        parts["tokenizer"] = _tokenizer(root, text_kind)
    if "scheduler" not in parts:
        parts["scheduler"] = _scheduler(root, text_kind, parts["unet"], prediction_type, original)
    return cls(**parts)
