"""Down blocks of ``UNet2DModel`` and the VAE encoder (Diffusers' names, arguments and keys). Each returns
``(hidden_states, skips)`` (encoder blocks: just ``hidden_states``); inputs ``(B, C, H, W)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .blocks_common import _DownStack, make_resnet, make_spatial_attention
from .sampling import Downsample2D


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
        self.resnets = nn.ModuleList(
            make_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, *r)
            for i in range(num_layers)
        )
        self.downsamplers = (
            nn.ModuleList(
                [
                    Downsample2D(
                        out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op"
                    )
                ]
            )
            if add_downsample
            else None
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
        self.resnets = nn.ModuleList(
            make_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, *r)
            for i in range(num_layers)
        )
        self.attentions = nn.ModuleList(
            make_spatial_attention(out_channels, attention_head_dim, resnet_eps, resnet_groups, output_scale_factor)
            for _ in range(num_layers)
        )
        if downsample_type == "conv":
            self.downsamplers = nn.ModuleList(
                [
                    Downsample2D(
                        out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op"
                    )
                ]
            )
        elif downsample_type == "resnet":
            self.downsamplers = nn.ModuleList([make_resnet(out_channels, out_channels, temb_channels, *r, down=True)])
        else:
            self.downsamplers = None
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
        self.resnets = nn.ModuleList(
            make_resnet(
                in_channels if i == 0 else out_channels, out_channels, temb_channels, *r, skip_time_act=skip_time_act
            )
            for i in range(num_layers)
        )
        self.downsamplers = (
            nn.ModuleList(
                [make_resnet(out_channels, out_channels, temb_channels, *r, skip_time_act=skip_time_act, down=True)]
            )
            if add_downsample
            else None
        )
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
        self.resnets = nn.ModuleList(
            make_resnet(in_channels if i == 0 else out_channels, out_channels, None, *r) for i in range(num_layers)
        )
        self.downsamplers = (
            nn.ModuleList(
                [
                    Downsample2D(
                        out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op"
                    )
                ]
            )
            if add_downsample
            else None
        )

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        attentions = getattr(self, "attentions", None) or [None] * len(self.resnets)
        for resnet, attn in zip(self.resnets, attentions):
            hidden_states = resnet(hidden_states, None)
            if attn is not None:
                hidden_states = attn(hidden_states)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
        return hidden_states


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
        self.attentions = nn.ModuleList(
            make_spatial_attention(out_channels, attention_head_dim, resnet_eps, resnet_groups, output_scale_factor)
            for _ in range(num_layers)
        )
