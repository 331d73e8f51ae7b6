"""Down blocks of ``UNet2DModel`` and the VAE encoder (Diffusers' names, arguments and keys). Each returns
``(hidden_states, skips)`` (encoder blocks: just ``hidden_states``); inputs ``(B, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .blocks_common import (
    ResnetSettings,
    _DownStack,
    down_widths,
    resamplers,
    resnet_layers,
    run_level,
    spatial_attention_factory,
)


class DownBlock2D(_DownStack):
    """``num_layers`` ResnetBlock2D, then a stride-2 conv (``add_downsample``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        output_scale_factor: float = 1.0,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        rs = ResnetSettings.from_block_args(locals())
        self.resnets = resnet_layers(down_widths(in_channels, out_channels, num_layers), out_channels, rs)[0]
        self.downsamplers = resamplers(
            "conv" if add_downsample else None, False, out_channels, padding=downsample_padding
        )
        self.gradient_checkpointing = False


class AttnDownBlock2D(_DownStack):
    """``num_layers`` x (ResnetBlock2D -> spatial self-attention), then a conv (``downsample_type="conv"``) or a
    down-sampling ResnetBlock2D (``"resnet"``); ``None`` for no downsampling."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        attention_head_dim: int | None = 1,
        output_scale_factor: float = 1.0,
        downsample_padding: int = 1,
        downsample_type: str | None = "conv",
    ) -> None:
        super().__init__()
        if downsample_type not in ("conv", "resnet", None):
            raise ValueError(f"downsample_type={downsample_type!r} must be 'conv', 'resnet' or None")
        rs = ResnetSettings.from_block_args(locals())
        self.downsample_type = downsample_type
        self.resnet_downsampler = downsample_type == "resnet"
        attention = spatial_attention_factory(out_channels, attention_head_dim, rs, rs.groups)
        resnets, attentions = resnet_layers(
            down_widths(in_channels, out_channels, num_layers), out_channels, rs, attention
        )
        self.attentions, self.resnets = attentions, resnets
        self.downsamplers = resamplers(downsample_type, False, out_channels, rs, downsample_padding)
        self.gradient_checkpointing = False


class ResnetDownsampleBlock2D(_DownStack):
    """``num_layers`` ResnetBlock2D, then a down-sampling ResnetBlock2D (``add_downsample``)."""

    resnet_downsampler = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        output_scale_factor: float = 1.0,
        add_downsample: bool = True,
        skip_time_act: bool = False,
    ) -> None:
        super().__init__()
        rs = ResnetSettings.from_block_args(locals())
        self.resnets = resnet_layers(down_widths(in_channels, out_channels, num_layers), out_channels, rs)[0]
        self.downsamplers = resamplers("resnet" if add_downsample else None, False, out_channels, rs)
        self.gradient_checkpointing = False


class _EncoderLevel(nn.Module):
    """A VAE encoder level: resnets (no time embedding), optionally a spatial self-attention after each, and an
    optional downsampler. ``forward(x) -> x`` (no skips)."""

    def _build(self, args: Mapping[str, Any], with_attention: bool) -> None:
        rs = ResnetSettings.from_block_args(args)
        out_channels = args["out_channels"]
        attention = (
            spatial_attention_factory(out_channels, args["attention_head_dim"], rs, rs.groups)
            if with_attention
            else None
        )
        widths = down_widths(args["in_channels"], out_channels, args["num_layers"])
        resnets, attentions = resnet_layers(widths, out_channels, rs, attention)
        if attentions is not None:
            self.attentions = attentions
        self.resnets = resnets
        kind = "conv" if args["add_downsample"] else None
        self.downsamplers = resamplers(kind, False, out_channels, padding=args["downsample_padding"])

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return run_level(self, hidden_states, None, self.downsamplers)


class DownEncoderBlock2D(_EncoderLevel):
    """VAE encoder level: ``num_layers`` ResnetBlock2D (no time embedding) and an optional downsampler.
    ``forward(x) -> x`` (no skips)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        output_scale_factor: float = 1.0,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        self._build(locals(), with_attention=False)


class AttnDownEncoderBlock2D(_EncoderLevel):
    """DownEncoderBlock2D with a spatial self-attention after each resnet."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        attention_head_dim: int | None = 1,
        output_scale_factor: float = 1.0,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        self._build(locals(), with_attention=True)
