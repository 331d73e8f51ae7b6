"""Config conversion from an original LDM YAML (``v1-inference.yaml``, ``v2-inference-v.yaml`` ...) for
``from_single_file(original_config=...)``: the UNet, VAE and scheduler configs the YAML states, on top of what the
checkpoint's shapes tell (:mod:`torchdiffusion.single_file_convert`). The YAML is data only: it is parsed with
``yaml.safe_load`` by the caller and never fetched.
"""

from __future__ import annotations

from typing import Any

# LDM's defaults for keys a YAML may leave out (ldm.models.diffusion.ddpm.DDPM).
_LDM_DEFAULTS = dict(timesteps=1000, linear_start=1e-4, linear_end=2e-2, beta_schedule="linear", parameterization="eps")
_LDM_BETA_SCHEDULES = {"linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
_LDM_PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def _section(tree: Any, path: str) -> dict[str, Any]:
    """``tree[a][b]...`` for ``path = "a.b..."``; ``ValueError`` naming the missing part."""
    node = tree
    for i, name in enumerate(path.split(".")):
        if not isinstance(node, dict) or not isinstance(node.get(name), dict):
            where = ".".join(path.split(".")[: i + 1])
            raise ValueError(
                f"original_config has no {where!r} section (expected an LDM config such as v1-inference.yaml)"
            )
        node = node[name]
    return node


def _one_int(value: Any, key: str) -> int:
    """An int from an int or a list of equal ints (per-level values this package keeps as one number)."""
    if isinstance(value, (list, tuple)):
        if not value or len(set(value)) != 1:
            raise ValueError(f"original_config {key}={value!r}: different values per level are not supported")
        value = value[0]
    if not isinstance(value, int):
        raise ValueError(f"original_config {key} must be an int, got {value!r}")
    return value


def unet_config_from_original(original: dict[str, Any], inferred: dict[str, Any]) -> dict[str, Any]:
    """A ``UNet2DConditionModel`` config from an LDM YAML (``model.params.unet_config.params``), on top of the
    config inferred from shapes (``inferred``: keeps what the YAML does not say, e.g. the embedding types).

    Heads follow LDM: ``num_head_channels`` (when not -1) gives ``channels // num_head_channels`` heads per level,
    else ``num_heads`` heads everywhere. ``sample_size`` is the inferred image size (512 or 768) divided by the
    VAE's downsampling factor from ``first_stage_config``.
    """
    params = _section(original, "model.params")
    unet = params.get("unet_config") or params.get("network_config")
    unet = _section({"unet_config": unet}, "unet_config.params")
    config = dict(inferred)
    try:
        mult = list(unet["channel_mult"])
        channels = [int(unet["model_channels"]) * int(m) for m in mult]
        attention = set(unet.get("attention_resolutions") or [])
        layers = _one_int(unet["num_res_blocks"], "num_res_blocks")
    except KeyError as e:
        raise ValueError(f"original_config unet_config.params has no {e.args[0]!r}") from None
    down, up, resolution = [], [], 1
    for i in range(len(channels)):
        down.append("CrossAttnDownBlock2D" if resolution in attention else "DownBlock2D")
        resolution *= 2 if i < len(channels) - 1 else 1
    for _ in channels:
        up.append("CrossAttnUpBlock2D" if resolution in attention else "UpBlock2D")
        resolution //= 2
    head_channels = unet.get("num_head_channels", -1)
    if head_channels not in (None, -1):
        heads: Any = [max(c // int(head_channels), 1) for c in channels]
    else:
        heads = unet.get("num_heads", 8)
        if not isinstance(heads, int) or heads < 1:
            raise ValueError(
                f"original_config num_heads must be a positive int when num_head_channels is -1, got {heads!r}"
            )
    context = unet.get("context_dim")
    depth = unet.get("transformer_depth", 1)
    config.update(
        in_channels=unet.get("in_channels", config.get("in_channels")),
        out_channels=unet.get("out_channels", config.get("out_channels")),
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=context[0] if isinstance(context, (list, tuple)) else context,
        attention_head_dim=heads,
        use_linear_projection=bool(unet.get("use_linear_in_transformer", False)),
        transformer_layers_per_block=list(depth) if isinstance(depth, (list, tuple)) else (depth or 1),
    )
    if "disable_self_attentions" in unet:
        config["only_cross_attention"] = unet["disable_self_attentions"]
    if isinstance(unet.get("num_classes"), int):
        config["num_class_embeds"] = unet["num_classes"]
    first = params.get("first_stage_config")
    if isinstance(first, dict) and isinstance(first.get("params"), dict) and "ddconfig" in first["params"]:
        levels = len(_section(original, "model.params.first_stage_config.params.ddconfig")["ch_mult"])
        config["sample_size"] = inferred.get("sample_size", 64) * 8 // 2 ** (levels - 1)
    return config


def vae_config_from_original(original: dict[str, Any], inferred: dict[str, Any]) -> dict[str, Any]:
    """An ``AutoencoderKL`` config from an LDM YAML (``first_stage_config.params.ddconfig``, ``scale_factor``)."""
    dd = _section(original, "model.params.first_stage_config.params.ddconfig")
    params = _section(original, "model.params")
    config = dict(inferred)
    try:
        config.update(
            in_channels=dd["in_channels"],
            out_channels=dd["out_ch"],
            block_out_channels=[int(dd["ch"]) * int(m) for m in dd["ch_mult"]],
            down_block_types=["DownEncoderBlock2D"] * len(dd["ch_mult"]),
            up_block_types=["UpDecoderBlock2D"] * len(dd["ch_mult"]),
            latent_channels=dd["z_channels"],
            layers_per_block=_one_int(dd["num_res_blocks"], "num_res_blocks"),
        )
    except KeyError as e:
        raise ValueError(f"original_config first_stage_config.params.ddconfig has no {e.args[0]!r}") from None
    if "scale_factor" in params:
        config["scaling_factor"] = float(params["scale_factor"])
    return config


def scheduler_config_from_original(original: dict[str, Any]) -> dict[str, Any]:
    """Scheduler config keys from an LDM YAML: ``timesteps``, ``linear_start``/``linear_end`` (LDM's "linear"
    schedule is Diffusers' ``scaled_linear``), ``parameterization`` (``"v"`` -> ``v_prediction``).

    Diffusers 0.42 reads only ``linear_start``/``linear_end`` here (it keeps 1000 steps and guesses the prediction
    type from the checkpoint); the YAML is the model's own statement, so we follow all of it.
    """
    params = {**_LDM_DEFAULTS, **_section(original, "model.params")}
    schedule = _LDM_BETA_SCHEDULES.get(params["beta_schedule"])
    if schedule is None:
        raise ValueError(
            f"original_config beta_schedule={params['beta_schedule']!r} is not supported; "
            f"use one of {sorted(_LDM_BETA_SCHEDULES)}"
        )
    prediction = _LDM_PARAMETERIZATIONS.get(params["parameterization"])
    if prediction is None:
        raise ValueError(
            f"original_config parameterization={params['parameterization']!r} is not supported; "
            f"use one of {sorted(_LDM_PARAMETERIZATIONS)}"
        )
    return dict(
        num_train_timesteps=int(params["timesteps"]),
        beta_start=float(params["linear_start"]),
        beta_end=float(params["linear_end"]),
        beta_schedule=schedule,
        prediction_type=prediction,
    )
