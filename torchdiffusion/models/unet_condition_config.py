"""UNet2DConditionModel's configuration resolved into per-block settings, the blocks built from them, and the
checks its ``forward`` runs at the door. Every rule raises ``ValueError`` (or ``NotImplementedError`` for
Diffusers features this library does not carry) naming the argument, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .layers.cross_attn_blocks import CrossAttnDownBlock2D, CrossAttnUpBlock2D, UNetMidBlock2DCrossAttn
from .layers.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps
from .layers.unet_2d_blocks import DownBlock2D, UNetMidBlock2D, UpBlock2D

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)
CLASS_EMBED_TYPES = (None, "timestep", "identity", "projection", "simple_projection")


@dataclass
class BlockPlan:
    """Per-block settings (index ``i`` = down block ``i``; up block ``i`` reads the reversed lists)."""

    args: dict[str, Any]
    down_types: list[str]
    up_types: list[str]
    mid_type: str | None
    block_out_channels: list[int]
    layers_per_block: list[int]
    heads: list[int]
    cross_attention_dim: list[int]
    transformer_layers: list[Any]
    up_transformer_layers: list[Any]
    only_cross_attention: list[bool]
    encoder_hid_dim_type: str | None
    context_dims: set[int]


def _strip(name: Any) -> Any:
    return name[7:] if isinstance(name, str) and name.startswith("UNetRes") else name


def _per_block(value: Any, n: int, name: str, kind: type | tuple[type, ...]) -> list:
    """``value`` given once (``kind``) or once per block (a list/tuple of length ``n``)."""
    if isinstance(value, kind) and not isinstance(value, (list, tuple)):
        return [value] * n
    if isinstance(value, (list, tuple)) and len(value) == n:
        return list(value)
    raise ValueError(f"{name}={value!r} must be a single value or a list with one entry per block ({n} blocks)")


def _transformer_layers(tl: list, rev_tl: Any, layers: list[int]) -> tuple[list, list]:
    """Transformer depths for the down blocks and the up blocks: one count per block, or per layer (a list per
    block). As in Diffusers, a per-layer list may be longer than the block's layers (the first ones are used); the
    up blocks (``layers_per_block + 1`` layers) take ``reverse_transformer_layers_per_block``, else the reversed
    down lists, which then need ``layers_per_block + 1`` entries."""
    n = len(layers)
    up_tl = list(reversed(tl)) if rev_tl is None else rev_tl
    up_name = "reverse_transformer_layers_per_block"
    if not isinstance(up_tl, (list, tuple)) or len(up_tl) != n:
        raise ValueError(f"{up_name}={rev_tl!r} must have one entry per up block ({n})")
    if rev_tl is None:
        up_name = "transformer_layers_per_block reversed for the up blocks (or reverse_transformer_layers_per_block)"

    def fit(entries: list, name: str, sizes: list[int]) -> list:
        out = []
        for i, (t, size) in enumerate(zip(entries, sizes)):
            if isinstance(t, (list, tuple)):
                if len(t) < size:
                    raise ValueError(f"{name}[{i}]={t!r} needs at least {size} entries, one per layer of the block")
                t = [_positive_int(x, name) for x in t[:size]]
            else:
                t = _positive_int(t, name)
            out.append(t)
        return out

    down = fit(tl, "transformer_layers_per_block", layers)
    return down, fit(list(up_tl), up_name, [layers[n - 1 - i] + 1 for i in range(n)])


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} entries must be positive integers, got {value!r}")
    return value


def plan_blocks(a: dict[str, Any]) -> BlockPlan:
    """Check the constructor arguments ``a`` and resolve them into a :class:`BlockPlan`."""
    down = [_strip(t) for t in a["down_block_types"]]
    up = [_strip(t) for t in a["up_block_types"]]
    mid = _strip(a["mid_block_type"])
    n = len(down)
    for name, types, allowed in (("down_block_types", down, DOWN_BLOCKS), ("up_block_types", up, UP_BLOCKS)):
        bad = [t for t in types if t not in allowed]
        if bad or not types:
            raise ValueError(f"{name}={tuple(a[name])!r} has unsupported entries {bad}; allowed: {allowed}")
    if mid not in MID_BLOCKS:
        raise ValueError(f"mid_block_type={mid!r} is not supported; allowed: {MID_BLOCKS}")
    if len(up) != n:
        raise ValueError(f"up_block_types has {len(up)} entries but down_block_types has {n}; they must match")
    channels = [_positive_int(c, "block_out_channels") for c in a["block_out_channels"]]
    if len(channels) != n:
        raise ValueError(f"block_out_channels={tuple(channels)} must have one entry per down block ({n})")
    groups = a["norm_num_groups"]
    if groups is None or isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"norm_num_groups={groups!r} must be a positive integer (None is not supported)")
    if any(c % groups for c in channels):
        raise ValueError(f"norm_num_groups={groups} must divide every entry of block_out_channels={tuple(channels)}")
    if a["dual_cross_attention"]:
        raise ValueError("dual_cross_attention=True (DualTransformer2DModel) is not supported; leave it False")
    if a["attention_type"] != "default":
        raise NotImplementedError(f"attention_type={a['attention_type']!r} (GLIGEN) is not supported; use 'default'")
    if a["resnet_time_scale_shift"] not in ("default", "scale_shift"):
        raise ValueError(f"resnet_time_scale_shift={a['resnet_time_scale_shift']!r} must be 'default' or 'scale_shift'")

    layers = _per_block(a["layers_per_block"], n, "layers_per_block", int)
    layers = [_positive_int(x, "layers_per_block") for x in layers]
    heads_arg = "num_attention_heads" if a["num_attention_heads"] is not None else "attention_head_dim"
    heads = [_positive_int(h, heads_arg) for h in _per_block(a[heads_arg], n, heads_arg, int)]
    cross = _per_block(a["cross_attention_dim"], n, "cross_attention_dim", int)
    only = _per_block(a["only_cross_attention"], n, "only_cross_attention", bool)

    tl = a["transformer_layers_per_block"]
    rev_tl = a["reverse_transformer_layers_per_block"]
    tl = _per_block(tl, n, "transformer_layers_per_block", int)
    tl, up_tl = _transformer_layers(tl, rev_tl, layers)
    for i, kind in enumerate(down):
        uses_attn = kind == "CrossAttnDownBlock2D" or up[n - 1 - i] == "CrossAttnUpBlock2D"
        if uses_attn:
            _check_attention(i, channels[i], heads[i], cross[i], heads_arg)
    if mid == "UNetMidBlock2DCrossAttn":
        _check_attention(n - 1, channels[-1], heads[-1], cross[-1], heads_arg)

    hid_type, hid_dim = a["encoder_hid_dim_type"], a["encoder_hid_dim"]
    if hid_type is None and hid_dim is not None:
        hid_type = "text_proj"
    if hid_type is not None and hid_dim is None:
        raise ValueError(f"encoder_hid_dim_type={hid_type!r} needs encoder_hid_dim (the context's input feature size)")
    if hid_type not in (None, "text_proj"):
        raise NotImplementedError(f"encoder_hid_dim_type={hid_type!r} is not supported; use None or 'text_proj'")
    if hid_type == "text_proj" and not isinstance(a["cross_attention_dim"], int):
        raise ValueError("encoder_hid_dim needs a single int cross_attention_dim to project the context to")

    attn_blocks = [i for i, t in enumerate(down) if t == "CrossAttnDownBlock2D"]
    attn_blocks += [n - 1 - i for i, t in enumerate(up) if t == "CrossAttnUpBlock2D"]
    attn_blocks += [n - 1] if mid == "UNetMidBlock2DCrossAttn" else []
    context_dims = {cross[i] for i in attn_blocks}
    _check_embeddings(a)
    return BlockPlan(a, down, up, mid, channels, layers, heads, cross, tl, up_tl, only, hid_type, context_dims)


def _check_attention(i: int, channels: int, heads: int, cross_dim: Any, heads_arg: str) -> None:
    if channels % heads != 0:
        raise ValueError(
            f"{heads_arg}[{i}]={heads} (the number of attention heads) must divide block_out_channels[{i}]={channels}"
        )
    if isinstance(cross_dim, bool) or not isinstance(cross_dim, int) or cross_dim < 1:
        raise ValueError(f"cross_attention_dim[{i}]={cross_dim!r} must be a positive integer")


def _check_embeddings(a: dict[str, Any]) -> None:
    if a["time_embedding_type"] not in ("positional", "fourier"):
        raise ValueError(f"time_embedding_type={a['time_embedding_type']!r} must be 'positional' or 'fourier'")
    if a["class_embed_type"] not in CLASS_EMBED_TYPES:
        raise ValueError(f"class_embed_type={a['class_embed_type']!r} must be one of {CLASS_EMBED_TYPES}")
    needs_dim = a["class_embed_type"] in ("projection", "simple_projection")
    if needs_dim and a["projection_class_embeddings_input_dim"] is None:
        raise ValueError(
            f"class_embed_type={a['class_embed_type']!r} needs projection_class_embeddings_input_dim to be set"
        )
    kind = a["addition_embed_type"]
    if kind == "text_time":
        for name in ("addition_time_embed_dim", "projection_class_embeddings_input_dim"):
            if not isinstance(a[name], int) or a[name] < 1:
                raise ValueError(f"addition_embed_type='text_time' needs {name} (a positive int), got {a[name]!r}")
    elif kind is not None:
        raise NotImplementedError(
            f"addition_embed_type={kind!r} (Kandinsky/UnCLIP style) is not supported; use None or 'text_time'"
        )


# ---- builders ----------------------------------------------------------------------------------------------


def build_time_proj(a: dict[str, Any]) -> tuple[nn.Module, int, int]:
    """``(time_proj, timestep_input_dim, time_embed_dim)``."""
    c0 = a["block_out_channels"][0]
    if a["time_embedding_type"] == "fourier":
        dim = a["time_embedding_dim"] or c0 * 2
        if dim % 2:
            raise ValueError(f"time_embedding_dim={dim} must be even for time_embedding_type='fourier'")
        flip = a["flip_sin_to_cos"]
        proj = GaussianFourierProjection(dim // 2, set_W_to_weight=False, log=False, flip_sin_to_cos=flip)
        return proj, dim, dim
    return Timesteps(c0, a["flip_sin_to_cos"], a["freq_shift"]), c0, a["time_embedding_dim"] or c0 * 4


def build_class_embedding(a: dict[str, Any], timestep_input_dim: int, time_embed_dim: int) -> nn.Module | None:
    kind = a["class_embed_type"]
    if kind is None and a["num_class_embeds"] is not None:
        return nn.Embedding(a["num_class_embeds"], time_embed_dim)
    if kind == "timestep":
        return TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=a["act_fn"])
    if kind == "identity":
        return nn.Identity()
    if kind == "projection":
        return TimestepEmbedding(a["projection_class_embeddings_input_dim"], time_embed_dim)
    if kind == "simple_projection":
        return nn.Linear(a["projection_class_embeddings_input_dim"], time_embed_dim)
    return None


def _common(p: BlockPlan, temb: int) -> dict[str, Any]:
    a = p.args
    return {
        "temb_channels": temb,
        "dropout": a["dropout"],
        "resnet_eps": a["norm_eps"],
        "resnet_act_fn": a["act_fn"],
        "resnet_groups": a["norm_num_groups"],
        "resnet_time_scale_shift": a["resnet_time_scale_shift"],
    }


def _attn(p: BlockPlan, i: int, transformer_layers: Any, only: bool) -> dict[str, Any]:
    return {
        "transformer_layers_per_block": transformer_layers,
        "cross_attention_dim": p.cross_attention_dim[i],
        "num_attention_heads": p.heads[i],
        "use_linear_projection": p.args["use_linear_projection"],
        "only_cross_attention": only,
        "upcast_attention": p.args["upcast_attention"],
    }


def build_down_block(p: BlockPlan, i: int, temb: int) -> nn.Module:
    channels = p.block_out_channels
    kw = dict(
        _common(p, temb),
        num_layers=p.layers_per_block[i],
        in_channels=channels[max(i - 1, 0)],
        out_channels=channels[i],
        add_downsample=i < len(channels) - 1,
        downsample_padding=p.args["downsample_padding"],
    )
    if p.down_types[i] == "CrossAttnDownBlock2D":
        return CrossAttnDownBlock2D(**kw, **_attn(p, i, p.transformer_layers[i], p.only_cross_attention[i]))
    return DownBlock2D(**kw)


def build_mid_block(p: BlockPlan, temb: int) -> nn.Module | None:
    a = p.args
    kw = dict(_common(p, temb), in_channels=p.block_out_channels[-1], output_scale_factor=a["mid_block_scale_factor"])
    if p.mid_type == "UNetMidBlock2DCrossAttn":
        layers = p.transformer_layers[-1]
        layers = layers[0] if isinstance(layers, (list, tuple)) else layers
        attn = _attn(p, len(p.block_out_channels) - 1, layers, False)
        del attn["only_cross_attention"]
        return UNetMidBlock2DCrossAttn(**kw, **attn)
    if p.mid_type == "UNetMidBlock2D":
        return UNetMidBlock2D(**kw, num_layers=0, add_attention=False)
    return None


def build_up_block(p: BlockPlan, i: int, temb: int) -> nn.Module:
    n = len(p.block_out_channels)
    rev = list(reversed(p.block_out_channels))
    j = n - 1 - i  # the matching down block
    kw = dict(
        _common(p, temb),
        num_layers=p.layers_per_block[j] + 1,
        in_channels=rev[min(i + 1, n - 1)],
        out_channels=rev[i],
        prev_output_channel=rev[max(i - 1, 0)],
        add_upsample=i < n - 1,
        resolution_idx=i,
    )
    if p.up_types[i] == "CrossAttnUpBlock2D":
        return CrossAttnUpBlock2D(**kw, **_attn(p, j, p.up_transformer_layers[i], p.only_cross_attention[j]))
    return UpBlock2D(**kw)


# ---- forward-time checks -----------------------------------------------------------------------------------


def _shape(t: Any, name: str, ndim: int, what: str) -> None:
    if not torch.is_tensor(t):
        raise TypeError(f"{name} must be a torch.Tensor {what}, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must be {what}, got shape {tuple(t.shape)}")


def check_forward_inputs(model, sample, timestep, context, class_labels, timestep_cond, added, down_res, mid_res):
    """Raise ``ValueError``/``TypeError`` naming the first bad forward argument of ``UNet2DConditionModel``."""
    cfg = model.config
    _shape(sample, "sample", 4, f"of shape (batch, {cfg.in_channels}, height, width)")
    batch = sample.shape[0]
    if sample.shape[1] != cfg.in_channels:
        raise ValueError(
            f"sample has {sample.shape[1]} channels (shape {tuple(sample.shape)}); the model takes "
            f"in_channels={cfg.in_channels}"
        )
    if torch.is_tensor(timestep):
        if timestep.ndim > 1 or timestep.numel() not in (1, batch):
            raise ValueError(f"timestep of shape {tuple(timestep.shape)} must be a scalar, (1,) or (batch={batch},)")
    elif isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
        raise TypeError(f"timestep must be a number or a tensor, got {type(timestep).__name__}")
    if model._cross_dims:
        want = cfg.encoder_hid_dim if model.encoder_hid_proj is not None else next(iter(model._cross_dims))
        if context is None:
            raise ValueError("encoder_hidden_states is required: a (batch, seq_len, dim) tensor (e.g. CLIP features)")
        _shape(context, "encoder_hidden_states", 3, f"of shape (batch, seq_len, {want})")
        if context.shape[0] != batch:
            raise ValueError(f"encoder_hidden_states has batch {context.shape[0]} but sample has batch {batch}")
        if len(model._cross_dims) == 1 and context.shape[-1] != want:
            arg = "encoder_hid_dim" if model.encoder_hid_proj is not None else "cross_attention_dim"
            raise ValueError(
                f"encoder_hidden_states has feature size {context.shape[-1]} (shape {tuple(context.shape)}); "
                f"the model's {arg} is {want}"
            )
    if model.class_embedding is not None and class_labels is None:
        raise ValueError(
            f"class_labels is required: the model has a class embedding "
            f"(class_embed_type={cfg.class_embed_type!r}, num_class_embeds={cfg.num_class_embeds!r})"
        )
    if timestep_cond is not None:
        if cfg.time_cond_proj_dim is None:
            raise ValueError("timestep_cond was given but the model has no time_cond_proj_dim (no cond_proj layer)")
        _shape(timestep_cond, "timestep_cond", 2, f"of shape (batch, {cfg.time_cond_proj_dim})")
    if cfg.addition_embed_type == "text_time":
        _check_text_time(cfg, added, batch)
    _check_residuals(model, down_res, mid_res)


def _check_text_time(cfg, added: Any, batch: int) -> None:
    if not isinstance(added, dict) or "text_embeds" not in added or "time_ids" not in added:
        raise ValueError(
            "added_cond_kwargs must be a dict with 'text_embeds' (batch, D) and 'time_ids' (batch, k) "
            "for addition_embed_type='text_time' (SDXL)"
        )
    text, ids = added["text_embeds"], added["time_ids"]
    _shape(text, "added_cond_kwargs['text_embeds']", 2, "of shape (batch, D)")
    if not torch.is_tensor(ids) or ids.ndim not in (1, 2):
        raise ValueError("added_cond_kwargs['time_ids'] must be a tensor of shape (batch, k)")
    total = text.shape[1] + (ids.numel() // max(text.shape[0], 1)) * cfg.addition_time_embed_dim
    uneven = ids.numel() % max(text.shape[0], 1)
    if text.shape[0] != batch or uneven or total != cfg.projection_class_embeddings_input_dim:
        raise ValueError(
            f"added_cond_kwargs: text_embeds {tuple(text.shape)} and time_ids {tuple(ids.shape)} give {total} features "
            f"for batch {text.shape[0]}; the model needs batch {batch} and "
            f"projection_class_embeddings_input_dim={cfg.projection_class_embeddings_input_dim}"
        )


def _check_residuals(model, down_res: Sequence[torch.Tensor] | None, mid_res: torch.Tensor | None) -> None:
    if mid_res is not None and down_res is None:
        raise ValueError("mid_block_additional_residual needs down_block_additional_residuals (ControlNet gives both)")
    if down_res is None or mid_res is None:
        return
    count = 1 + sum(len(b.resnets) + (getattr(b, "downsamplers", None) is not None) for b in model.down_blocks)
    if len(down_res) != count:
        raise ValueError(f"down_block_additional_residuals has {len(down_res)} tensors; the model has {count} skips")
