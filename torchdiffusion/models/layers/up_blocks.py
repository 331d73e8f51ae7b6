"""Up blocks of ``UNet2DModel`` and the VAE decoder (Diffusers' names, arguments and keys). UNet up blocks take
their down twin's skips (``res_hidden_states_tuple``, consumed last first); inputs ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks_common import _UpStack, attention_stack, resamplers, resnet_stack, run_level


class UpBlock2D(_UpStack):
    """``num_layers`` x (concat skip -> ResnetBlock2D), then nearest x2 + conv (``add_upsample``)."""

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
        r = (resnet_eps, resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.resnets = resnet_stack(in_channels, out_channels, temb_channels, num_layers, r, prev_output_channel)
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
        r = (resnet_eps, resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.upsample_type = upsample_type
        self.resnet_upsampler = upsample_type == "resnet"
        self.resnets = resnet_stack(in_channels, out_channels, temb_channels, num_layers, r, prev_output_channel)
        self.attentions = attention_stack(
            out_channels, attention_head_dim, resnet_eps, resnet_groups, output_scale_factor, num_layers
        )
        self.upsamplers = resamplers(upsample_type, True, out_channels, temb_channels, r)
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
        r = (resnet_eps, resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.resnets = resnet_stack(
            in_channels, out_channels, temb_channels, num_layers, r, prev_output_channel, skip_time_act=skip_time_act
        )
        kind = "resnet" if add_upsample else None
        self.upsamplers = resamplers(kind, True, out_channels, temb_channels, r, skip_time_act=skip_time_act)
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx


class UpDecoderBlock2D(nn.Module):
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
        r = (resnet_eps, resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor)
        self.resnets = resnet_stack(in_channels, out_channels, temb_channels, num_layers, r)
        self.upsamplers = resamplers("conv" if add_upsample else None, True, out_channels)
        self.resolution_idx = resolution_idx

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return run_level(self, hidden_states, temb, self.upsamplers)


class AttnUpDecoderBlock2D(UpDecoderBlock2D):
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
        super().__init__(
            in_channels,
            out_channels,
            resolution_idx,
            dropout,
            num_layers,
            resnet_eps,
            resnet_time_scale_shift,
            resnet_act_fn,
            resnet_groups,
            resnet_pre_norm,
            output_scale_factor,
            add_upsample,
            temb_channels,
        )
        self.attentions = attention_stack(
            out_channels, attention_head_dim, resnet_eps, resnet_groups, output_scale_factor, num_layers
        )
