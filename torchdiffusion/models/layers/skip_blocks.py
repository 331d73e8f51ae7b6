"""Score-SDE (NCSN++) style blocks with a progressive RGB skip path: ``SkipDownBlock2D``, ``AttnSkipDownBlock2D``,
``SkipUpBlock2D``, ``AttnSkipUpBlock2D``. Resampling uses FIR filters; output scale defaults to sqrt(2).

The down blocks also take and return ``skip_sample`` (the image, FIR-downsampled per level and added through a
1x1 ``skip_conv``); the up blocks build an image-space output from each level (``skip_norm -> act -> skip_conv``)
and return ``(hidden_states, skip_sample)``. Group counts are ``min(channels // 4, 32)`` as in Diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .blocks_common import _DownStack, make_resnet, make_spatial_attention
from .cpu_kernels import conv2d, group_norm_act
from .resampling import FirDownsample2D, FirUpsample2D
from .resnet import ResnetBlock2D

SQRT2 = math.sqrt(2.0)


def _groups(channels: int) -> int:
    return min(channels // 4, 32)


def _resnet(cin: int, cout: int, r: tuple, groups: int, **extra: Any) -> ResnetBlock2D:
    """A resnet from ``r = (temb_channels, eps, dropout, norm, act, scale)``; output groups follow ``cout``."""
    temb, eps, dropout, norm, act, scale = r
    return make_resnet(cin, cout, temb, eps, groups, dropout, norm, act, scale, groups_out=_groups(cout), **extra)


class SkipDownBlock2D(_DownStack):
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
        r = (temb_channels, resnet_eps, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.resnets = nn.ModuleList()
        for i in range(num_layers):
            cin = in_channels if i == 0 else out_channels
            self.resnets.append(_resnet(cin, out_channels, r, _groups(cin)))
        self._add_attentions(out_channels, num_layers)
        if add_downsample:
            fir = dict(use_in_shortcut=True, down=True, kernel="fir")
            self.resnet_down = _resnet(out_channels, out_channels, r, _groups(out_channels), **fir)
            self.downsamplers = nn.ModuleList([FirDownsample2D(out_channels, out_channels=out_channels)])
            self.skip_conv = nn.Conv2d(3, out_channels, kernel_size=(1, 1), stride=(1, 1))
        else:
            self.resnet_down = self.downsamplers = self.skip_conv = None

    def _add_attentions(self, channels: int, num_layers: int) -> None:
        pass

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


class AttnSkipDownBlock2D(SkipDownBlock2D):
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
        self._head_dim, self._eps, self._scale = attention_head_dim, resnet_eps, output_scale_factor
        super().__init__(
            in_channels,
            out_channels,
            temb_channels,
            dropout,
            num_layers,
            resnet_eps,
            resnet_time_scale_shift,
            resnet_act_fn,
            resnet_pre_norm,
            output_scale_factor,
            add_downsample,
        )

    def _add_attentions(self, channels: int, num_layers: int) -> None:
        self.attentions = nn.ModuleList(
            make_spatial_attention(channels, self._head_dim, self._eps, 32, self._scale) for _ in range(num_layers)
        )


class SkipUpBlock2D(nn.Module):
    """``num_layers`` x (concat skip -> resnet); the image path is FIR-upsampled and, with ``add_upsample``, gets
    this level's ``skip_conv(act(skip_norm(h)))``; then a FIR up-sampling resnet."""

    has_cross_attention = False

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
        r = (temb_channels, resnet_eps, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.resnets = nn.ModuleList()
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            prev = prev_output_channel if i == 0 else out_channels
            self.resnets.append(_resnet(prev + skip, out_channels, r, self._first_groups(prev, skip)))
        self._add_attentions(out_channels)
        self.upsampler = FirUpsample2D(in_channels, out_channels=out_channels)
        if add_upsample:
            fir = dict(use_in_shortcut=True, up=True, kernel="fir")
            self.resnet_up = _resnet(out_channels, out_channels, r, _groups(out_channels), **fir)
            self.skip_conv = nn.Conv2d(out_channels, 3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
            self.skip_norm = nn.GroupNorm(_groups(out_channels), out_channels, eps=resnet_eps, affine=True)
            self.act = nn.SiLU()
        else:
            self.resnet_up = self.skip_conv = self.skip_norm = self.act = None
        self.resolution_idx = resolution_idx

    @staticmethod
    def _first_groups(prev: int, skip: int) -> int:
        return _groups(prev + skip)

    def _add_attentions(self, channels: int) -> None:
        pass

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


class AttnSkipUpBlock2D(SkipUpBlock2D):
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
        self._head_dim, self._eps, self._scale = attention_head_dim, resnet_eps, output_scale_factor
        super().__init__(
            in_channels,
            prev_output_channel,
            out_channels,
            temb_channels,
            resolution_idx,
            dropout,
            num_layers,
            resnet_eps,
            resnet_time_scale_shift,
            resnet_act_fn,
            resnet_pre_norm,
            output_scale_factor,
            add_upsample,
        )

    @staticmethod
    def _first_groups(prev: int, skip: int) -> int:
        return min(prev + skip // 4, 32)  # Diffusers' operator precedence, kept for identical checkpoints

    def _add_attentions(self, channels: int) -> None:
        self.attentions = nn.ModuleList([make_spatial_attention(channels, self._head_dim, self._eps, 32, self._scale)])
