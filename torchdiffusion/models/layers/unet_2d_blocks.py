"""The named UNet blocks of Diffusers' ``UNet2DModel`` and VAE (importable from here, as in Diffusers) and the
``get_down_block`` / ``get_up_block`` factories that turn a config's block-type names into modules, passing each
block the arguments it takes (a ``"UNetRes"`` prefix is ignored; unknown names raise ``ValueError``).

Where they live: ``down_blocks.py``, ``up_blocks.py``, ``blocks_common.py`` (``UNetMidBlock2D``),
``skip_blocks.py`` (score-SDE skip blocks); Stable Diffusion's cross-attention blocks in ``cross_attn_blocks.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .blocks_common import UNetMidBlock2D
from .down_blocks import (
    AttnDownBlock2D,
    AttnDownEncoderBlock2D,
    DownBlock2D,
    DownEncoderBlock2D,
    ResnetDownsampleBlock2D,
)
from .skip_blocks import AttnSkipDownBlock2D, AttnSkipUpBlock2D, SkipDownBlock2D, SkipUpBlock2D
from .up_blocks import AttnUpBlock2D, AttnUpDecoderBlock2D, ResnetUpsampleBlock2D, UpBlock2D, UpDecoderBlock2D

__all__ = [
    "AttnDownBlock2D",
    "AttnDownEncoderBlock2D",
    "AttnSkipDownBlock2D",
    "AttnSkipUpBlock2D",
    "AttnUpBlock2D",
    "AttnUpDecoderBlock2D",
    "DownBlock2D",
    "DownEncoderBlock2D",
    "ResnetDownsampleBlock2D",
    "ResnetUpsampleBlock2D",
    "SkipDownBlock2D",
    "SkipUpBlock2D",
    "UNetMidBlock2D",
    "UpBlock2D",
    "UpDecoderBlock2D",
    "get_down_block",
    "get_up_block",
]

DOWN_BLOCK_TYPES = (
    "DownBlock2D",
    "AttnDownBlock2D",
    "ResnetDownsampleBlock2D",
    "SkipDownBlock2D",
    "AttnSkipDownBlock2D",
    "DownEncoderBlock2D",
    "AttnDownEncoderBlock2D",
    "CrossAttnDownBlock2D",
)
UP_BLOCK_TYPES = (
    "UpBlock2D",
    "AttnUpBlock2D",
    "ResnetUpsampleBlock2D",
    "SkipUpBlock2D",
    "AttnSkipUpBlock2D",
    "UpDecoderBlock2D",
    "AttnUpDecoderBlock2D",
    "CrossAttnUpBlock2D",
)


def _strip(name: Any) -> Any:
    return name[7:] if isinstance(name, str) and name.startswith("UNetRes") else name


def _base_kwargs(a: dict[str, Any], *extra: str) -> tuple[dict[str, Any], int | None]:
    """The arguments every block of a factory takes (plus ``extra`` keys), and ``attention_head_dim`` (defaults to
    ``num_attention_heads``, as in Diffusers)."""
    keys = (
        "num_layers",
        "in_channels",
        "out_channels",
        "dropout",
        "resnet_eps",
        "resnet_act_fn",
        "resnet_time_scale_shift",
    )
    base = {k: a[k] for k in keys + extra}
    head_dim = a["attention_head_dim"]
    return base, a["num_attention_heads"] if head_dim is None else head_dim


def _cross_attn_kwargs(a: dict[str, Any]) -> dict[str, Any]:
    if a["cross_attention_dim"] is None:
        raise ValueError("cross_attention_dim must be given for cross-attention blocks")
    keys = (
        "transformer_layers_per_block",
        "cross_attention_dim",
        "num_attention_heads",
        "dual_cross_attention",
        "use_linear_projection",
        "only_cross_attention",
        "upcast_attention",
        "attention_type",
    )
    return {k: a[k] for k in keys}


def get_down_block(
    down_block_type: str,
    num_layers: int,
    in_channels: int,
    out_channels: int,
    temb_channels: int | None,
    add_downsample: bool,
    resnet_eps: float,
    resnet_act_fn: str,
    transformer_layers_per_block: int = 1,
    num_attention_heads: int | None = None,
    resnet_groups: int | None = None,
    cross_attention_dim: int | None = None,
    downsample_padding: int | None = None,
    dual_cross_attention: bool = False,
    use_linear_projection: bool = False,
    only_cross_attention: bool = False,
    upcast_attention: bool = False,
    resnet_time_scale_shift: str = "default",
    attention_type: str = "default",
    resnet_skip_time_act: bool = False,
    resnet_out_scale_factor: float = 1.0,
    cross_attention_norm: str | None = None,
    attention_head_dim: int | None = None,
    downsample_type: str | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """The down block named ``down_block_type``; ``ValueError`` naming it when unknown."""
    a = dict(locals())
    kind = _strip(down_block_type)
    base, attention_head_dim = _base_kwargs(a)
    timed = dict(base, temb_channels=temb_channels)
    pad = {} if downsample_padding is None else {"downsample_padding": downsample_padding}
    if kind == "DownBlock2D":
        return DownBlock2D(**timed, add_downsample=add_downsample, resnet_groups=resnet_groups, **pad)
    if kind == "ResnetDownsampleBlock2D":
        return ResnetDownsampleBlock2D(
            **timed,
            add_downsample=add_downsample,
            resnet_groups=resnet_groups,
            skip_time_act=resnet_skip_time_act,
            output_scale_factor=resnet_out_scale_factor,
        )
    if kind == "AttnDownBlock2D":
        dtype = (downsample_type or "conv") if add_downsample else None
        return AttnDownBlock2D(
            **timed, resnet_groups=resnet_groups, attention_head_dim=attention_head_dim, downsample_type=dtype, **pad
        )
    if kind == "SkipDownBlock2D":
        return SkipDownBlock2D(**timed, add_downsample=add_downsample, **pad)
    if kind == "AttnSkipDownBlock2D":
        return AttnSkipDownBlock2D(**timed, add_downsample=add_downsample, attention_head_dim=attention_head_dim)
    if kind == "DownEncoderBlock2D":
        return DownEncoderBlock2D(**base, add_downsample=add_downsample, resnet_groups=resnet_groups, **pad)
    if kind == "AttnDownEncoderBlock2D":
        return AttnDownEncoderBlock2D(
            **base,
            add_downsample=add_downsample,
            resnet_groups=resnet_groups,
            attention_head_dim=attention_head_dim,
            **pad,
        )
    if kind == "CrossAttnDownBlock2D":
        from .cross_attn_blocks import CrossAttnDownBlock2D

        return CrossAttnDownBlock2D(
            **timed, add_downsample=add_downsample, resnet_groups=resnet_groups, **pad, **_cross_attn_kwargs(a)
        )
    raise ValueError(f"down_block_type={down_block_type!r} is not supported; use one of {DOWN_BLOCK_TYPES}")


def get_up_block(
    up_block_type: str,
    num_layers: int,
    in_channels: int,
    out_channels: int,
    prev_output_channel: int,
    temb_channels: int | None,
    add_upsample: bool,
    resnet_eps: float,
    resnet_act_fn: str,
    resolution_idx: int | None = None,
    transformer_layers_per_block: int = 1,
    num_attention_heads: int | None = None,
    resnet_groups: int | None = None,
    cross_attention_dim: int | None = None,
    dual_cross_attention: bool = False,
    use_linear_projection: bool = False,
    only_cross_attention: bool = False,
    upcast_attention: bool = False,
    resnet_time_scale_shift: str = "default",
    attention_type: str = "default",
    resnet_skip_time_act: bool = False,
    resnet_out_scale_factor: float = 1.0,
    cross_attention_norm: str | None = None,
    attention_head_dim: int | None = None,
    upsample_type: str | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """The up block named ``up_block_type``; ``ValueError`` naming it when unknown."""
    a = dict(locals())
    kind = _strip(up_block_type)
    base, attention_head_dim = _base_kwargs(a, "resolution_idx")
    timed = dict(base, temb_channels=temb_channels, prev_output_channel=prev_output_channel)
    if kind == "UpBlock2D":
        return UpBlock2D(**timed, add_upsample=add_upsample, resnet_groups=resnet_groups)
    if kind == "ResnetUpsampleBlock2D":
        return ResnetUpsampleBlock2D(
            **timed,
            add_upsample=add_upsample,
            resnet_groups=resnet_groups,
            skip_time_act=resnet_skip_time_act,
            output_scale_factor=resnet_out_scale_factor,
        )
    if kind == "AttnUpBlock2D":
        utype = (upsample_type or "conv") if add_upsample else None
        return AttnUpBlock2D(
            **timed, resnet_groups=resnet_groups, attention_head_dim=attention_head_dim, upsample_type=utype
        )
    if kind == "SkipUpBlock2D":
        return SkipUpBlock2D(**timed, add_upsample=add_upsample)
    if kind == "AttnSkipUpBlock2D":
        return AttnSkipUpBlock2D(**timed, add_upsample=add_upsample, attention_head_dim=attention_head_dim)
    if kind == "UpDecoderBlock2D":
        return UpDecoderBlock2D(
            **base, add_upsample=add_upsample, resnet_groups=resnet_groups, temb_channels=temb_channels
        )
    if kind == "AttnUpDecoderBlock2D":
        return AttnUpDecoderBlock2D(
            **base,
            add_upsample=add_upsample,
            resnet_groups=resnet_groups,
            attention_head_dim=attention_head_dim,
            temb_channels=temb_channels,
        )
    if kind == "CrossAttnUpBlock2D":
        from .cross_attn_blocks import CrossAttnUpBlock2D

        return CrossAttnUpBlock2D(
            **timed, add_upsample=add_upsample, resnet_groups=resnet_groups, **_cross_attn_kwargs(a)
        )
    raise ValueError(f"up_block_type={up_block_type!r} is not supported; use one of {UP_BLOCK_TYPES}")
