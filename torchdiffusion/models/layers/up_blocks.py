"""Up blocks of ``UNet2DModel`` and the VAE decoder (Diffusers' names, arguments and keys). UNet up blocks take
their down twin's skips (``res_hidden_states_tuple``, consumed last first); inputs ``(B, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .blocks_common import (
    ResnetSettings,
    _UpStack,
    down_widths,
    resamplers,
    resnet_layers,
    run_level,
    spatial_attention_factory,
    up_widths,
)


class UpBlock2D(_UpStack):
    """``num_layers`` x (concat skip -> ResnetBlock2D), then nearest x2 + conv (``add_upsample``)."""

    applies_freeu = True

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int | None,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
    ) -> None:
        super().__init__()
        rs = ResnetSettings.from_block_args(locals())
        widths = up_widths(in_channels, prev_output_channel, out_channels, num_layers)
        self.resnets = resnet_layers(widths, out_channels, rs)[0]
        self.upsamplers = resamplers("conv" if add_upsample else None, True, out_channels)
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx


class AttnUpBlock2D(_UpStack):
    """UpBlock2D with a spatial self-attention after each resnet; ``upsample_type`` "conv", "resnet" or None."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int | None,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        attention_head_dim: int | None = 1,
        output_scale_factor: float = 1.0,
        upsample_type: str | None = "conv",
    ) -> None:
        super().__init__()
        if upsample_type not in ("conv", "resnet", None):
            raise ValueError(f"upsample_type={upsample_type!r} must be 'conv', 'resnet' or None")
        rs = ResnetSettings.from_block_args(locals())
        self.upsample_type = upsample_type
        self.resnet_upsampler = upsample_type == "resnet"
        attention = spatial_attention_factory(out_channels, attention_head_dim, rs, rs.groups)
        widths = up_widths(in_channels, prev_output_channel, out_channels, num_layers)
        resnets, attentions = resnet_layers(widths, out_channels, rs, attention)
        self.attentions, self.resnets = attentions, resnets
        self.upsamplers = resamplers(upsample_type, True, out_channels, rs)
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx

    def forward(self, hidden_states, res_hidden_states_tuple, temb=None, upsample_size=None, *args, **kwargs):
        return super().forward(hidden_states, res_hidden_states_tuple, temb)  # Diffusers ignores upsample_size


class ResnetUpsampleBlock2D(_UpStack):
    """UpBlock2D whose upsampler is an up-sampling ResnetBlock2D."""

    resnet_upsampler = True

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int | None,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
        skip_time_act: bool = False,
    ) -> None:
        super().__init__()
        rs = ResnetSettings.from_block_args(locals())
        widths = up_widths(in_channels, prev_output_channel, out_channels, num_layers)
        self.resnets = resnet_layers(widths, out_channels, rs)[0]
        self.upsamplers = resamplers("resnet" if add_upsample else None, True, out_channels, rs)
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx


class _DecoderLevel(nn.Module):
    """A VAE decoder level: resnets, optionally a spatial self-attention after each, and an optional nearest x2 +
    conv. ``forward(x, temb=None) -> x``."""

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
        self.upsamplers = resamplers("conv" if args["add_upsample"] else None, True, out_channels)
        self.resolution_idx = args["resolution_idx"]

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return run_level(self, hidden_states, temb, self.upsamplers)


class UpDecoderBlock2D(_DecoderLevel):
    """VAE decoder level: ``num_layers`` ResnetBlock2D and an optional nearest x2 + conv. ``forward(x, temb=None)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
        temb_channels: int | None = None,
    ) -> None:
        super().__init__()
        self._build(locals(), with_attention=False)


class AttnUpDecoderBlock2D(_DecoderLevel):
    """UpDecoderBlock2D with a spatial self-attention after each resnet."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        attention_head_dim: int | None = 1,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
        temb_channels: int | None = None,
    ) -> None:
        super().__init__()
        self._build(locals(), with_attention=True)
