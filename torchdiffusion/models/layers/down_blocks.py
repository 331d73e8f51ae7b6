"""Down blocks of ``UNet2DModel`` and the VAE encoder (Diffusers' names, arguments and keys). Each returns
``(hidden_states, skips)`` (encoder blocks: just ``hidden_states``); inputs ``(B, C, H, W)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .blocks_common import _DownStack, attention_stack, resamplers, resnet_stack, run_level


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
        r = (resnet_eps, resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.resnets = resnet_stack(in_channels, out_channels, temb_channels, num_layers, r)
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
        r = (resnet_eps, resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.downsample_type = downsample_type
        self.resnet_downsampler = downsample_type == "resnet"
        self.resnets = resnet_stack(in_channels, out_channels, temb_channels, num_layers, r)
        self.attentions = attention_stack(
            out_channels, attention_head_dim, resnet_eps, resnet_groups, output_scale_factor, num_layers
        )
        self.downsamplers = resamplers(downsample_type, False, out_channels, temb_channels, r, downsample_padding)
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
        r = (resnet_eps, resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.resnets = resnet_stack(
            in_channels, out_channels, temb_channels, num_layers, r, skip_time_act=skip_time_act
        )
        kind = "resnet" if add_downsample else None
        self.downsamplers = resamplers(kind, False, out_channels, temb_channels, r, skip_time_act=skip_time_act)
        self.gradient_checkpointing = False


class DownEncoderBlock2D(nn.Module):
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
        r = (resnet_eps, resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.resnets = resnet_stack(in_channels, out_channels, None, num_layers, r)
        self.downsamplers = resamplers(
            "conv" if add_downsample else None, False, out_channels, padding=downsample_padding
        )

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return run_level(self, hidden_states, None, self.downsamplers)


class AttnDownEncoderBlock2D(DownEncoderBlock2D):
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
        super().__init__(
            in_channels,
            out_channels,
            dropout,
            num_layers,
            resnet_eps,
            resnet_time_scale_shift,
            resnet_act_fn,
            resnet_groups,
            resnet_pre_norm,
            output_scale_factor,
            add_downsample,
            downsample_padding,
        )
        self.attentions = attention_stack(
            out_channels, attention_head_dim, resnet_eps, resnet_groups, output_scale_factor, num_layers
        )
