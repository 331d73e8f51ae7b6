"""Building blocks shared by the named UNet blocks: resnet / spatial-attention constructors, the builders of a
block's ``resnets`` / ``attentions`` / ``downsamplers`` / ``upsamplers`` lists, the shared down / up forward passes,
and ``UNetMidBlock2D``. Shapes: ``(B, C, H, W)`` maps, ``temb`` ``(B, temb_channels)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..modeling import checkpointed
from .attention import Attention
from .resampling import Downsample2D, Upsample2D
from .resnet import ResnetBlock2D


def make_resnet(
    cin: int,
    cout: int,
    temb: int | None,
    eps: float,
    groups: int,
    dropout: float,
    norm: str,
    act: str,
    scale: float = 1.0,
    pre_norm: bool = True,
    **extra: Any,
) -> ResnetBlock2D:
    """A ResnetBlock2D from a block's ``resnet_*`` arguments."""
    return ResnetBlock2D(
        in_channels=cin,
        out_channels=cout,
        temb_channels=temb,
        eps=eps,
        groups=groups,
        dropout=dropout,
        time_embedding_norm=norm,
        non_linearity=act,
        output_scale_factor=scale,
        pre_norm=pre_norm,
        **extra,
    )


def make_spatial_attention(
    channels: int, head_dim: int | None, eps: float, groups: int | None, scale: float = 1.0
) -> Attention:
    """Self-attention over the pixels of a ``channels``-wide map, ``channels // head_dim`` heads, residual."""
    head_dim = channels if head_dim is None else head_dim
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or not 1 <= head_dim <= channels:
        raise ValueError(f"attention_head_dim={head_dim!r} must be an int in [1, {channels}] (the block's channels)")
    return Attention(
        channels,
        heads=channels // head_dim,
        dim_head=head_dim,
        rescale_output_factor=scale,
        eps=eps,
        norm_num_groups=groups,
        residual_connection=True,
        bias=True,
        upcast_softmax=True,
        _from_deprecated_attn_block=True,
    )


def resnet_stack(
    in_channels: int,
    out_channels: int,
    temb_channels: int | None,
    num_layers: int,
    r: Sequence[Any],
    prev_output_channel: int | None = None,
    **extra: Any,
) -> nn.ModuleList:
    """A block's ``resnets``: ``num_layers`` ResnetBlock2D to ``out_channels``; ``r`` holds :func:`make_resnet`'s
    ``(eps, groups, dropout, norm, act, scale[, pre_norm])``. The first reads ``in_channels``, the others
    ``out_channels``; an up block (``prev_output_channel`` given) reads previous output + skip (:func:`_up_in`)."""
    if prev_output_channel is None:
        widths = [in_channels] + [out_channels] * (num_layers - 1)
    else:
        widths = [_up_in(i, num_layers, in_channels, prev_output_channel, out_channels) for i in range(num_layers)]
    return nn.ModuleList(make_resnet(cin, out_channels, temb_channels, *r, **extra) for cin in widths[:num_layers])


def attention_stack(
    channels: int, head_dim: int | None, eps: float, groups: int | None, scale: float, num_layers: int
) -> nn.ModuleList:
    """A block's ``attentions``: ``num_layers`` spatial self-attentions (:func:`make_spatial_attention`)."""
    return nn.ModuleList(make_spatial_attention(channels, head_dim, eps, groups, scale) for _ in range(num_layers))


def resamplers(
    kind: str | None,
    up: bool,
    channels: int,
    temb_channels: int | None = None,
    r: Sequence[Any] = (),
    padding: int = 1,
    **extra: Any,
) -> nn.ModuleList | None:
    """A block's ``downsamplers`` (``up=False``) or ``upsamplers``: ``"conv"`` a stride-2 conv (``padding``) or a
    nearest x2 + conv, ``"resnet"`` a resampling ResnetBlock2D (``r``, ``extra`` as in :func:`make_resnet`),
    ``None`` none."""
    if kind == "conv":
        if up:
            return nn.ModuleList([Upsample2D(channels, use_conv=True, out_channels=channels)])
        return nn.ModuleList([Downsample2D(channels, use_conv=True, out_channels=channels, padding=padding, name="op")])
    if kind == "resnet":
        return nn.ModuleList([make_resnet(channels, channels, temb_channels, *r, **extra, up=up, down=not up)])
    return None


class _DownStack(nn.Module):
    """Shared forward: ``resnet (-> attention)`` per layer, each output kept as a skip, then the downsampler.
    Cross-attention blocks reuse :meth:`_layers` with their attention arguments."""

    has_cross_attention = False
    resnet_downsampler = False  # the downsampler is a ResnetBlock2D (takes temb)

    def _layers(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None, *attn_args: Any
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(hidden_states, skips)`` after the resnets (and ``attention(h, *attn_args)``), one skip per layer."""
        states: tuple[torch.Tensor, ...] = ()
        attentions = getattr(self, "attentions", None) or [None] * len(self.resnets)
        for resnet, attn in zip(self.resnets, attentions):
            hidden_states = checkpointed(self, resnet, hidden_states, temb)
            if attn is not None:
                hidden_states = attn(hidden_states, *attn_args)
            states += (hidden_states,)
        return hidden_states, states

    def _downsample(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None, states: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states, temb) if self.resnet_downsampler else down(hidden_states)
            states += (hidden_states,)
        return hidden_states, states

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        hidden_states, states = self._layers(hidden_states, temb)
        return self._downsample(hidden_states, temb, states)


class _UpStack(nn.Module):
    """Shared forward: per layer concat the next skip, ``resnet (-> attention)``; then the upsampler.
    Cross-attention blocks reuse :meth:`_layers` with their attention arguments."""

    has_cross_attention = False
    resnet_upsampler = False

    def _layers(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: Sequence[torch.Tensor],
        temb: torch.Tensor | None,
        *attn_args: Any,
    ) -> torch.Tensor:
        """Concat the skips (last first) one per layer, each followed by resnet (and ``attention(h, *attn_args)``)."""
        skips = list(res_hidden_states_tuple)
        attentions = getattr(self, "attentions", None) or [None] * len(self.resnets)
        for resnet, attn in zip(self.resnets, attentions):
            hidden_states = torch.cat([hidden_states, skips.pop()], dim=1)
            hidden_states = checkpointed(self, resnet, hidden_states, temb)
            if attn is not None:
                hidden_states = attn(hidden_states, *attn_args)
        return hidden_states

    def _upsample(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None, upsample_size: Sequence[int] | None
    ) -> torch.Tensor:
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, temb) if self.resnet_upsampler else up(hidden_states, upsample_size)
        return hidden_states

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: Sequence[torch.Tensor],
        temb: torch.Tensor | None = None,
        upsample_size: Sequence[int] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        hidden_states = self._layers(hidden_states, res_hidden_states_tuple, temb)
        return self._upsample(hidden_states, temb, upsample_size)


def run_level(
    block: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor | None, samplers: nn.ModuleList | None
) -> torch.Tensor:
    """Forward of a VAE encoder / decoder level (no skips): ``resnet(h, temb) (-> attention)`` per layer, then
    each of ``samplers`` (the block's ``downsamplers`` / ``upsamplers``) on ``h``."""
    attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
    for resnet, attn in zip(block.resnets, attentions):
        hidden_states = resnet(hidden_states, temb)
        if attn is not None:
            hidden_states = attn(hidden_states, temb=temb)
    if samplers is not None:
        for sampler in samplers:
            hidden_states = sampler(hidden_states)
    return hidden_states


def _up_in(i: int, num_layers: int, in_channels: int, prev_output_channel: int, out_channels: int) -> int:
    """Input width of up-block resnet ``i``: previous output (or ``out``) plus the matching skip's channels."""
    skip = in_channels if i == num_layers - 1 else out_channels
    return (prev_output_channel if i == 0 else out_channels) + skip


class UNetMidBlock2D(nn.Module):
    """``resnet, (attention, resnet) x num_layers`` at constant width. ``add_attention=False`` keeps the resnets
    only; ``attn_groups`` defaults to ``resnet_groups`` for ``"default"`` time-embedding norm, else no GroupNorm."""

    has_cross_attention = False

    def __init__(
        self,
        in_channels: int,
        temb_channels: int | None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int | None = 32,
        attn_groups: int | None = None,
        resnet_pre_norm: bool = True,
        add_attention: bool = True,
        attention_head_dim: int | None = 1,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        if attn_groups is None:
            attn_groups = resnet_groups if resnet_time_scale_shift == "default" else None
        self.add_attention = add_attention
        r = (resnet_eps, resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.resnets = resnet_stack(in_channels, in_channels, temb_channels, num_layers + 1, r)
        self.attentions = nn.ModuleList(
            make_spatial_attention(in_channels, attention_head_dim, resnet_eps, attn_groups, output_scale_factor)
            if add_attention
            else None
            for _ in range(num_layers)
        )
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = attn(hidden_states, temb=temb)
            hidden_states = checkpointed(self, resnet, hidden_states, temb)
        return hidden_states
