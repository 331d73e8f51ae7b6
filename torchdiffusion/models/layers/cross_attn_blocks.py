"""UNet blocks with a spatial transformer after each resnet (Stable Diffusion): ``CrossAttnDownBlock2D``,
``CrossAttnUpBlock2D`` and ``UNetMidBlock2DCrossAttn``, with Diffusers' arguments and state-dict keys
(``resnets.i``, ``attentions.i``, ``downsamplers.0`` / ``upsamplers.0``).

Shapes: ``hidden_states`` ``(B, C, H, W)``, ``temb`` ``(B, temb_channels)``, ``encoder_hidden_states``
``(B, M, cross_attention_dim)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..modeling import checkpointed
from .resnet import ResnetBlock2D
from .sampling import Downsample2D, Upsample2D
from .transformer import Transformer2DModel


def _per_layer(value: int | Sequence[int], num_layers: int, name: str) -> list[int]:
    """``transformer_layers_per_block`` as one count per resnet/transformer pair."""
    if isinstance(value, int):
        return [value] * num_layers
    value = list(value)
    if len(value) != num_layers:
        raise ValueError(f"{name}={value} has {len(value)} entries; the block has {num_layers} layers")
    return value


def _heads_check(out_channels: int, num_attention_heads: int) -> int:
    if num_attention_heads < 1 or out_channels % num_attention_heads != 0:
        raise ValueError(
            f"num_attention_heads={num_attention_heads} must be a positive divisor of the block's channels "
            f"({out_channels})"
        )
    return out_channels // num_attention_heads


def _transformer(
    out_channels: int,
    num_attention_heads: int,
    layers: int,
    cross_attention_dim: int,
    groups: int,
    use_linear_projection: bool,
    only_cross_attention: bool,
    upcast_attention: bool,
) -> Transformer2DModel:
    return Transformer2DModel(
        num_attention_heads,
        _heads_check(out_channels, num_attention_heads),
        in_channels=out_channels,
        num_layers=layers,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=groups,
        use_linear_projection=use_linear_projection,
        only_cross_attention=only_cross_attention,
        upcast_attention=upcast_attention,
    )


def _reject_dual(dual_cross_attention: bool) -> None:
    if dual_cross_attention:
        raise ValueError(
            "dual_cross_attention=True (DualTransformer2DModel) is not supported; use dual_cross_attention=False"
        )


class CrossAttnDownBlock2D(nn.Module):
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
        _reject_dual(dual_cross_attention)
        layers = _per_layer(transformer_layers_per_block, num_layers, "transformer_layers_per_block")
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                in_channels=in_channels if i == 0 else out_channels,
                out_channels=out_channels,
                temb_channels=temb_channels,
                eps=resnet_eps,
                groups=resnet_groups,
                dropout=dropout,
                time_embedding_norm=resnet_time_scale_shift,
                non_linearity=resnet_act_fn,
                output_scale_factor=output_scale_factor,
                pre_norm=resnet_pre_norm,
            )
            for i in range(num_layers)
        )
        self.attentions = nn.ModuleList(
            _transformer(
                out_channels,
                num_attention_heads,
                layers[i],
                cross_attention_dim,
                resnet_groups,
                use_linear_projection,
                only_cross_attention,
                upcast_attention,
            )
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
        output_states: tuple[torch.Tensor, ...] = ()
        last = len(self.resnets) - 1
        for i, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
            hidden_states = checkpointed(self, resnet, hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask)
            if i == last and additional_residuals is not None:
                hidden_states = hidden_states + additional_residuals
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class CrossAttnUpBlock2D(nn.Module):
    """``num_layers`` x (concat skip -> ResnetBlock2D -> Transformer2DModel), then an optional upsampler."""

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
        _reject_dual(dual_cross_attention)
        layers = _per_layer(transformer_layers_per_block, num_layers, "transformer_layers_per_block")
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        self.resolution_idx = resolution_idx
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channel if i == 0 else out_channels
            resnets.append(
                ResnetBlock2D(
                    in_channels=resnet_in + skip_channels,
                    out_channels=out_channels,
                    temb_channels=temb_channels,
                    eps=resnet_eps,
                    groups=resnet_groups,
                    dropout=dropout,
                    time_embedding_norm=resnet_time_scale_shift,
                    non_linearity=resnet_act_fn,
                    output_scale_factor=output_scale_factor,
                    pre_norm=resnet_pre_norm,
                )
            )
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(
            _transformer(
                out_channels,
                num_attention_heads,
                layers[i],
                cross_attention_dim,
                resnet_groups,
                use_linear_projection,
                only_cross_attention,
                upcast_attention,
            )
            for i in range(num_layers)
        )
        upsampler = Upsample2D(out_channels, use_conv=True, out_channels=out_channels) if add_upsample else None
        self.upsamplers = nn.ModuleList([upsampler]) if upsampler is not None else None
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
        for resnet, attn in zip(self.resnets, self.attentions):
            skip = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = torch.cat([hidden_states, skip], dim=1)
            hidden_states = checkpointed(self, resnet, hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


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
        _reject_dual(dual_cross_attention)
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        groups_out = resnet_groups_out or resnet_groups
        layers = _per_layer(transformer_layers_per_block, num_layers, "transformer_layers_per_block")

        def resnet(cin: int, groups: int, **extra: Any) -> ResnetBlock2D:
            return ResnetBlock2D(
                in_channels=cin,
                out_channels=out_channels,
                temb_channels=temb_channels,
                eps=resnet_eps,
                groups=groups,
                dropout=dropout,
                time_embedding_norm=resnet_time_scale_shift,
                non_linearity=resnet_act_fn,
                output_scale_factor=output_scale_factor,
                pre_norm=resnet_pre_norm,
                **extra,
            )

        first_extra = {"groups_out": groups_out} if groups_out != resnet_groups else {}
        self.resnets = nn.ModuleList(
            [resnet(in_channels, resnet_groups, **first_extra)]
            + [resnet(out_channels, groups_out) for _ in range(num_layers)]
        )
        self.attentions = nn.ModuleList(
            _transformer(
                out_channels,
                num_attention_heads,
                layers[i],
                cross_attention_dim,
                groups_out,
                use_linear_projection,
                False,
                upcast_attention,
            )
            for i in range(num_layers)
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
    ) -> torch.Tensor:
        hidden_states = checkpointed(self, self.resnets[0], hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = attn(hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask)
            hidden_states = checkpointed(self, resnet, hidden_states, temb)
        return hidden_states
