"""Score-SDE (NCSN++) style blocks with a progressive RGB skip path: ``SkipDownBlock2D``, ``AttnSkipDownBlock2D``,
``SkipUpBlock2D``, ``AttnSkipUpBlock2D``. Resampling uses FIR filters; output scale defaults to sqrt(2).

The down blocks also take and return ``skip_sample`` (the image, FIR-downsampled per level and added through a
1x1 ``skip_conv``); the up blocks build an image-space output from each level (``skip_norm -> act -> skip_conv``)
and return ``(hidden_states, skip_sample)``. Group counts are ``min(channels // 4, 32)`` as in Diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .blocks_common import ResnetSettings, _DownStack, check_head_dim, make_spatial_attention, score_sde_groups
from .cpu_kernels import conv2d, group_norm_act
from .resampling import FirDownsample2D, FirUpsample2D

SQRT2 = math.sqrt(2.0)


def _attention_factory(args: Mapping[str, Any]) -> Callable[[], nn.Module]:
    """The skip blocks' spatial self-attention (32 groups, as in Diffusers) from the block's arguments."""
    channels, head_dim = args["out_channels"], args["attention_head_dim"]
    eps, scale = args["resnet_eps"], args["output_scale_factor"]
    check_head_dim(channels, head_dim)
    return lambda: make_spatial_attention(channels, head_dim, eps, 32, scale)


class _SkipDown(_DownStack):
    """Shared build and forward of the skip down blocks."""

    def _build(self, args: Mapping[str, Any], with_attention: bool) -> None:
        rs = ResnetSettings.from_block_args(args)
        out_channels, num_layers = args["out_channels"], args["num_layers"]
        attention = _attention_factory(args) if with_attention else None
        if attention is not None:
            self.attentions = nn.ModuleList()
        self.resnets = nn.ModuleList()
        for i in range(num_layers):
            cin = args["in_channels"] if i == 0 else out_channels
            self.resnets.append(
                rs.build(cin, out_channels, groups=score_sde_groups(cin), groups_out=score_sde_groups(out_channels))
            )
            if attention is not None:
                self.attentions.append(attention())
        if args["add_downsample"]:
            fir = dict(use_in_shortcut=True, down=True, kernel="fir")
            self.resnet_down = rs.build(out_channels, out_channels, groups=score_sde_groups(out_channels), **fir)
            self.downsamplers = nn.ModuleList([FirDownsample2D(out_channels, out_channels=out_channels)])
            self.skip_conv = nn.Conv2d(3, out_channels, kernel_size=(1, 1), stride=(1, 1))
        else:
            self.resnet_down = self.downsamplers = self.skip_conv = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        skip_sample: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]:
        hidden_states, states = self._layers(hidden_states, temb)
        if self.downsamplers is not None:
            hidden_states = self.resnet_down(hidden_states, temb)
            for down in self.downsamplers:
                skip_sample = down(skip_sample)
            hidden_states = conv2d(self.skip_conv, skip_sample) + hidden_states
            states += (hidden_states,)
        return hidden_states, states, skip_sample


class SkipDownBlock2D(_SkipDown):
    """``num_layers`` resnets; with ``add_downsample`` a FIR down-sampling resnet plus the image skip path."""

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
        resnet_pre_norm: bool = True,
        output_scale_factor: float = SQRT2,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        self._build(locals(), with_attention=False)


class AttnSkipDownBlock2D(_SkipDown):
    """SkipDownBlock2D with a spatial self-attention (32 groups) after each resnet."""

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
        resnet_pre_norm: bool = True,
        attention_head_dim: int | None = 1,
        output_scale_factor: float = SQRT2,
        add_downsample: bool = True,
    ) -> None:
        super().__init__()
        self._build(locals(), with_attention=True)


class _SkipUp(nn.Module):
    """Shared build and forward of the skip up blocks: ``num_layers`` x (concat skip -> resnet), optionally one
    attention; the image path is FIR-upsampled and, with ``add_upsample``, gets this level's
    ``skip_conv(act(skip_norm(h)))``; then a FIR up-sampling resnet."""

    has_cross_attention = False

    def _build(self, args: Mapping[str, Any], with_attention: bool) -> None:
        rs = ResnetSettings.from_block_args(args)
        in_channels, out_channels, num_layers = args["in_channels"], args["out_channels"], args["num_layers"]
        if with_attention:
            self.attentions = nn.ModuleList()
        self.resnets = nn.ModuleList()
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            prev = args["prev_output_channel"] if i == 0 else out_channels
            # AttnSkipUpBlock2D keeps Diffusers' operator precedence (prev + skip // 4) for identical checkpoints
            groups = min(prev + skip // 4, 32) if with_attention else score_sde_groups(prev + skip)
            self.resnets.append(
                rs.build(prev + skip, out_channels, groups=groups, groups_out=score_sde_groups(out_channels))
            )
        if with_attention:
            self.attentions.append(_attention_factory(args)())
        self.upsampler = FirUpsample2D(in_channels, out_channels=out_channels)
        if args["add_upsample"]:
            fir = dict(use_in_shortcut=True, up=True, kernel="fir")
            self.resnet_up = rs.build(out_channels, out_channels, groups=score_sde_groups(out_channels), **fir)
            self.skip_conv = nn.Conv2d(out_channels, 3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
            self.skip_norm = nn.GroupNorm(
                score_sde_groups(out_channels), out_channels, eps=args["resnet_eps"], affine=True
            )
            self.act = nn.SiLU()
        else:
            self.resnet_up = self.skip_conv = self.skip_norm = self.act = None
        self.resolution_idx = args["resolution_idx"]

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: Sequence[torch.Tensor],
        temb: torch.Tensor | None = None,
        skip_sample: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | float]:
        skips = list(res_hidden_states_tuple)
        for resnet in self.resnets:
            hidden_states = resnet(torch.cat([hidden_states, skips.pop()], dim=1), temb)
        attentions = getattr(self, "attentions", None)
        if attentions is not None:
            hidden_states = attentions[0](hidden_states)
        skip_sample = self.upsampler(skip_sample) if skip_sample is not None else 0
        if self.resnet_up is not None:
            skip_sample = skip_sample + conv2d(self.skip_conv, group_norm_act(hidden_states, self.skip_norm, self.act))
            hidden_states = self.resnet_up(hidden_states, temb)
        return hidden_states, skip_sample


class SkipUpBlock2D(_SkipUp):
    """``num_layers`` x (concat skip -> resnet); the image path is FIR-upsampled and, with ``add_upsample``, gets
    this level's ``skip_conv(act(skip_norm(h)))``; then a FIR up-sampling resnet."""

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
        resnet_pre_norm: bool = True,
        output_scale_factor: float = SQRT2,
        add_upsample: bool = True,
        upsample_padding: int = 1,
    ) -> None:
        super().__init__()
        self._build(locals(), with_attention=False)


class AttnSkipUpBlock2D(_SkipUp):
    """SkipUpBlock2D with one spatial self-attention (32 groups) after the resnets."""

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
        resnet_pre_norm: bool = True,
        attention_head_dim: int | None = 1,
        output_scale_factor: float = SQRT2,
        add_upsample: bool = True,
    ) -> None:
        super().__init__()
        self._build(locals(), with_attention=True)
