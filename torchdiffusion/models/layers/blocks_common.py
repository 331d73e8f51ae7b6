"""Building blocks shared by the named UNet blocks: resnet / spatial-attention constructors, the shared
down / up forward passes, and ``UNetMidBlock2D``. Shapes: ``(B, C, H, W)`` maps, ``temb`` ``(B, temb_channels)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..modeling import checkpointed
from .attention import Attention
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


class _DownStack(nn.Module):
    """Shared forward: ``resnet (-> attention)`` per layer, each output kept as a skip, then the downsampler."""

    has_cross_attention = False
    resnet_downsampler = False  # the downsampler is a ResnetBlock2D (takes temb)

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        states: tuple[torch.Tensor, ...] = ()
        attentions = getattr(self, "attentions", None) or [None] * len(self.resnets)
        for resnet, attn in zip(self.resnets, attentions):
            hidden_states = checkpointed(self, resnet, hidden_states, temb)
            if attn is not None:
                hidden_states = attn(hidden_states)
            states += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states, temb) if self.resnet_downsampler else down(hidden_states)
            states += (hidden_states,)
        return hidden_states, states


class _UpStack(nn.Module):
    """Shared forward: per layer concat the next skip, ``resnet (-> attention)``; then the upsampler."""

    has_cross_attention = False
    resnet_upsampler = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: Sequence[torch.Tensor],
        temb: torch.Tensor | None = None,
        upsample_size: Sequence[int] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        skips = list(res_hidden_states_tuple)
        attentions = getattr(self, "attentions", None) or [None] * len(self.resnets)
        for resnet, attn in zip(self.resnets, attentions):
            hidden_states = torch.cat([hidden_states, skips.pop()], dim=1)
            hidden_states = checkpointed(self, resnet, hidden_states, temb)
            if attn is not None:
                hidden_states = attn(hidden_states)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, temb) if self.resnet_upsampler else up(hidden_states, upsample_size)
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
        self.resnets = nn.ModuleList(
            make_resnet(in_channels, in_channels, temb_channels, *r) for _ in range(num_layers + 1)
        )
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
