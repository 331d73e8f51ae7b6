"""UNet blocks with a spatial transformer after each resnet (Stable Diffusion): ``CrossAttnDownBlock2D``,
``CrossAttnUpBlock2D`` and ``UNetMidBlock2DCrossAttn``, with Diffusers' arguments and state-dict keys
(``resnets.i``, ``attentions.i``, ``downsamplers.0`` / ``upsamplers.0``).

Shapes: ``hidden_states`` ``(B, C, H, W)``, ``temb`` ``(B, temb_channels)``, ``encoder_hidden_states``
``(B, M, cross_attention_dim)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..modeling import checkpointed
from .blocks_common import (
    ResnetSettings,
    _DownStack,
    _UpStack,
    down_widths,
    resamplers,
    resnet_layers,
    score_sde_groups,
    up_widths,
)
from .transformer import Transformer2DModel


def _per_layer(value: int | Sequence[int], num_layers: int, name: str) -> list[int]:
    """``transformer_layers_per_block`` as one count per resnet/transformer pair (a longer list: its first
    ``num_layers`` entries, as in Diffusers)."""
    if isinstance(value, int):
        return [value] * num_layers
    value = list(value)
    if len(value) < num_layers:
        raise ValueError(f"{name}={value} has {len(value)} entries; the block has {num_layers} layers")
    return value[:num_layers]


def _heads_check(out_channels: int, num_attention_heads: int) -> int:
    if num_attention_heads < 1 or out_channels % num_attention_heads != 0:
        raise ValueError(
            f"num_attention_heads={num_attention_heads} must be a positive divisor of the block's channels "
            f"({out_channels})"
        )
    return out_channels // num_attention_heads


def _transformer_factory(
    block: nn.Module,
    out_channels: int,
    num_attention_heads: int,
    transformer_layers_per_block: int | Sequence[int],
    num_layers: int,
    cross_attention_dim: int,
    groups: int,
    dual_cross_attention: bool,
    use_linear_projection: bool,
    only_cross_attention: bool,
    upcast_attention: bool,
) -> Callable[[], Transformer2DModel]:
    """A maker of the ``attentions`` of a cross-attention block, called once per layer: Transformer2DModel ``i``
    is ``out_channels`` wide with ``num_attention_heads`` heads and ``transformer_layers_per_block[i]`` layers.
    Checks the arguments at once and sets the block's ``has_cross_attention`` / ``num_attention_heads``."""
    if dual_cross_attention:
        raise ValueError(
            "dual_cross_attention=True (DualTransformer2DModel) is not supported; use dual_cross_attention=False"
        )
    layers = iter(_per_layer(transformer_layers_per_block, num_layers, "transformer_layers_per_block"))
    head_dim = _heads_check(out_channels, num_attention_heads)
    block.has_cross_attention = True
    block.num_attention_heads = num_attention_heads
    return lambda: Transformer2DModel(
        num_attention_heads,
        head_dim,
        in_channels=out_channels,
        num_layers=next(layers),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=groups,
        use_linear_projection=use_linear_projection,
        only_cross_attention=only_cross_attention,
        upcast_attention=upcast_attention,
    )


class CrossAttnDownBlock2D(_DownStack):
    """``num_layers`` x (ResnetBlock2D -> Transformer2DModel), then an optional stride-2 conv downsampler.

    ``forward`` returns ``(hidden_states, output_states)``: the skip tensors for the up path, one per layer plus
    one after the downsampler.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: int | Sequence[int] = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        output_scale_factor: float = 1.0,
        downsample_padding: int = 1,
        add_downsample: bool = True,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        attention_type: str = "default",
    ) -> None:
        super().__init__()
        rs = ResnetSettings.from_block_args(locals())
        attention = _transformer_factory(
            self, out_channels, num_attention_heads, transformer_layers_per_block, num_layers, cross_attention_dim,
            resnet_groups, dual_cross_attention, use_linear_projection, only_cross_attention, upcast_attention,
        )  # fmt: skip
        widths = down_widths(in_channels, out_channels, num_layers)
        resnets, attentions = resnet_layers(widths, out_channels, rs, attention)
        self.attentions, self.resnets = attentions, resnets
        self.downsamplers = resamplers(
            "conv" if add_downsample else None, False, out_channels, padding=downsample_padding
        )
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        additional_residuals: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        hidden_states, states = self._layers(
            hidden_states, temb, encoder_hidden_states, attention_mask, encoder_attention_mask
        )
        if additional_residuals is not None and states:  # ControlNet/T2I residual after the last layer
            hidden_states = hidden_states + additional_residuals
            states = states[:-1] + (hidden_states,)
        return self._downsample(hidden_states, temb, states)


class CrossAttnUpBlock2D(_UpStack):
    """``num_layers`` x (concat skip -> ResnetBlock2D -> Transformer2DModel), then an optional upsampler."""

    applies_freeu = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        temb_channels: int,
        resolution_idx: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: int | Sequence[int] = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        resnet_pre_norm: bool = True,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        attention_type: str = "default",
    ) -> None:
        super().__init__()
        self.resolution_idx = resolution_idx
        rs = ResnetSettings.from_block_args(locals())
        attention = _transformer_factory(
            self, out_channels, num_attention_heads, transformer_layers_per_block, num_layers, cross_attention_dim,
            resnet_groups, dual_cross_attention, use_linear_projection, only_cross_attention, upcast_attention,
        )  # fmt: skip
        widths = up_widths(in_channels, prev_output_channel, out_channels, num_layers)
        resnets, attentions = resnet_layers(widths, out_channels, rs, attention)
        self.attentions, self.resnets = attentions, resnets
        self.upsamplers = resamplers("conv" if add_upsample else None, True, out_channels)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        upsample_size: Sequence[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = self._layers(
            hidden_states, res_hidden_states_tuple, temb, encoder_hidden_states, attention_mask, encoder_attention_mask
        )
        return self._upsample(hidden_states, temb, upsample_size)


class UNetMidBlock2DCrossAttn(nn.Module):
    """ResnetBlock2D, then ``num_layers`` x (Transformer2DModel -> ResnetBlock2D), at constant resolution."""

    def __init__(
        self,
        in_channels: int,
        temb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: int | Sequence[int] = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int | None = 32,
        resnet_groups_out: int | None = None,
        resnet_pre_norm: bool = True,
        num_attention_heads: int = 1,
        output_scale_factor: float = 1.0,
        cross_attention_dim: int = 1280,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        attention_type: str = "default",
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        resnet_groups = resnet_groups if resnet_groups is not None else score_sde_groups(in_channels)
        groups_out = resnet_groups_out or resnet_groups
        rs = ResnetSettings.from_block_args(locals(), groups=resnet_groups)
        attention = _transformer_factory(
            self, out_channels, num_attention_heads, transformer_layers_per_block, num_layers, cross_attention_dim,
            groups_out, dual_cross_attention, use_linear_projection, False, upcast_attention,
        )  # fmt: skip
        resnets = [rs.build(in_channels, out_channels, groups_out=groups_out)]
        attentions = []
        for _ in range(num_layers):
            attentions.append(attention())
            resnets.append(rs.build(out_channels, out_channels, groups=groups_out))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = checkpointed(self, self.resnets[0], hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = attn(hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask)
            hidden_states = checkpointed(self, resnet, hidden_states, temb)
        return hidden_states
