"""Building blocks shared by the named UNet blocks: :class:`ResnetSettings` (what a block gives each of its
ResnetBlock2D), the builders of a block's ``resnets`` / ``attentions`` / ``downsamplers`` / ``upsamplers``, the
shared down / up forward passes, and ``UNetMidBlock2D``. Shapes: ``(B, C, H, W)`` maps, ``temb``
``(B, temb_channels)``.

Modules are created in Diffusers' order (resnet 0, attention 0, resnet 1, ...; mid blocks resnet, attention,
resnet), so ``torch.manual_seed(s)`` before building a model gives the same initial weights as Diffusers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..modeling import checkpointed
from .attention import Attention
from .freeu import apply_freeu
from .resampling import Downsample2D, Upsample2D
from .resnet import ResnetBlock2D


@dataclass(frozen=True)
class ResnetSettings:
    """The ResnetBlock2D arguments a block shares among its resnets (field names are ResnetBlock2D's)."""

    temb_channels: int | None
    eps: float = 1e-6
    groups: int = 32
    dropout: float = 0.0
    time_embedding_norm: str = "default"
    non_linearity: str = "swish"
    output_scale_factor: float = 1.0
    pre_norm: bool = True
    skip_time_act: bool = False

    @classmethod
    def from_block_args(cls, args: Mapping[str, Any], **changes: Any) -> ResnetSettings:
        """The settings from a block's constructor arguments ``args`` (Diffusers' names: ``temb_channels``,
        ``resnet_eps``, ``resnet_groups``, ``dropout``, ``resnet_time_scale_shift``, ``resnet_act_fn``,
        ``output_scale_factor``, ``resnet_pre_norm``, ``skip_time_act``; absent ones keep the defaults), with
        ``changes`` (field names) applied."""
        names = {
            "temb_channels": "temb_channels",
            "resnet_eps": "eps",
            "resnet_groups": "groups",
            "dropout": "dropout",
            "resnet_time_scale_shift": "time_embedding_norm",
            "resnet_act_fn": "non_linearity",
            "output_scale_factor": "output_scale_factor",
            "resnet_pre_norm": "pre_norm",
            "skip_time_act": "skip_time_act",
        }
        fields = {field: args[arg] for arg, field in names.items() if arg in args}
        fields.setdefault("temb_channels", None)
        return cls(**{**fields, **changes})

    def build(self, in_channels: int, out_channels: int, **extra: Any) -> ResnetBlock2D:
        """A ResnetBlock2D ``in_channels -> out_channels`` with these settings plus ``extra`` ResnetBlock2D
        arguments (``groups_out``, ``up``, ``down``, ``kernel``, ``use_in_shortcut``...), which may also override a
        setting (``groups=``)."""
        settings = {**dataclasses.asdict(self), **extra}
        return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, **settings)


def make_spatial_attention(
    channels: int, head_dim: int | None, eps: float, groups: int | None, scale: float = 1.0
) -> Attention:
    """Self-attention over the pixels of a ``channels``-wide map, ``channels // head_dim`` heads, residual."""
    head_dim = check_head_dim(channels, head_dim)
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


def score_sde_groups(channels: int) -> int:
    """GroupNorm groups of a ``channels``-wide layer in score-SDE models (``norm_num_groups=None``, the skip blocks):
    ``min(channels // 4, 32)``."""
    return min(channels // 4, 32)


def check_head_dim(channels: int, head_dim: int | None) -> int:
    """``head_dim`` (``None``: ``channels``, one head) checked against a ``channels``-wide map."""
    head_dim = channels if head_dim is None else head_dim
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or not 1 <= head_dim <= channels:
        raise ValueError(f"attention_head_dim={head_dim!r} must be an int in [1, {channels}] (the block's channels)")
    return head_dim


def down_widths(in_channels: int, out_channels: int, num_layers: int) -> list[int]:
    """Input widths of a down block's resnets: the first reads ``in_channels``, the others ``out_channels``."""
    return ([in_channels] + [out_channels] * (num_layers - 1))[:num_layers]


def up_widths(in_channels: int, prev_output_channel: int, out_channels: int, num_layers: int) -> list[int]:
    """Input widths of an up block's resnets: the previous output (``prev_output_channel`` for the first, then
    ``out_channels``) plus the matching skip (``in_channels`` for the last, else ``out_channels``)."""
    return [
        (prev_output_channel if i == 0 else out_channels) + (in_channels if i == num_layers - 1 else out_channels)
        for i in range(num_layers)
    ]


def resnet_layers(
    widths: Sequence[int],
    out_channels: int,
    resnet: ResnetSettings,
    attention: Callable[[], nn.Module] | None = None,
) -> tuple[nn.ModuleList, nn.ModuleList | None]:
    """A block's ``(resnets, attentions)``: one ResnetBlock2D ``widths[i] -> out_channels`` per layer, each followed
    by ``attention()`` when given (``attentions`` is None without it), created in that interleaved order."""
    resnets, attentions = nn.ModuleList(), nn.ModuleList()
    for width in widths:
        resnets.append(resnet.build(width, out_channels))
        if attention is not None:
            attentions.append(attention())
    return resnets, attentions if attention is not None else None


def spatial_attention_factory(
    channels: int, head_dim: int | None, resnet: ResnetSettings, groups: int | None
) -> Callable[[], Attention]:
    """A maker of the spatial self-attention that follows a block's resnets (:func:`make_spatial_attention` with
    ``groups`` GroupNorm groups, None for no GroupNorm; eps and output scale from ``resnet``); checks ``head_dim``
    at once."""
    check_head_dim(channels, head_dim)
    return lambda: make_spatial_attention(channels, head_dim, resnet.eps, groups, resnet.output_scale_factor)


def resamplers(
    kind: str | None,
    up: bool,
    channels: int,
    resnet: ResnetSettings | None = None,
    padding: int = 1,
) -> nn.ModuleList | None:
    """A block's ``downsamplers`` (``up=False``) or ``upsamplers``: ``"conv"`` a stride-2 conv (``padding``) or a
    nearest x2 + conv, ``"resnet"`` a resampling ResnetBlock2D built from ``resnet``, ``None`` none."""
    if kind == "conv":
        if up:
            return nn.ModuleList([Upsample2D(channels, use_conv=True, out_channels=channels)])
        return nn.ModuleList([Downsample2D(channels, use_conv=True, out_channels=channels, padding=padding, name="op")])
    if kind == "resnet":
        if resnet is None:
            raise ValueError("resamplers('resnet', ...) needs the block's ResnetSettings (resnet=...)")
        return nn.ModuleList([resnet.build(channels, channels, up=up, down=not up)])
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
    applies_freeu = False  # UpBlock2D and CrossAttnUpBlock2D take FreeU (enable_freeu), as in Diffusers

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
            skip = skips.pop()
            if self.applies_freeu:
                hidden_states, skip = apply_freeu(self, hidden_states, skip)
            hidden_states = torch.cat([hidden_states, skip], dim=1)
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
        resnet_groups = resnet_groups if resnet_groups is not None else score_sde_groups(in_channels)
        if attn_groups is None:
            attn_groups = resnet_groups if resnet_time_scale_shift == "default" else None
        self.add_attention = add_attention
        rs = ResnetSettings.from_block_args(locals(), groups=resnet_groups)
        attention = spatial_attention_factory(in_channels, attention_head_dim, rs, attn_groups)
        resnets = [rs.build(in_channels, in_channels)]
        attentions: list[nn.Module | None] = []
        for _ in range(num_layers):
            attentions.append(attention() if add_attention else None)
            resnets.append(rs.build(in_channels, in_channels))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = attn(hidden_states, temb=temb)
            hidden_states = checkpointed(self, resnet, hidden_states, temb)
        return hidden_states
