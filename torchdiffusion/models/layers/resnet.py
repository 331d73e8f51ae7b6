"""``ResnetBlock2D``: the residual block of DDPM / Stable Diffusion UNets and VAEs, with Diffusers' arguments and
keys (``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``, ``dropout``, ``conv2``, ``conv_shortcut``).

``x -> GroupNorm -> act -> [up/down] -> conv1 -> (+ temb | scale-shift) -> GroupNorm -> act -> dropout -> conv2``,
plus the (optionally 1x1-projected, resampled) input, divided by ``output_scale_factor``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .activations import get_activation
from .cpu_kernels import conv2d, group_norm_act, residual_add
from .cpu_kernels import needs_graph as _graph
from .resampling import Downsample2D, Upsample2D, fir_downsample_2d, fir_upsample_2d

TIME_EMBEDDING_NORMS = ("default", "scale_shift")


class ResnetBlock2D(nn.Module):
    """Residual block on ``(B, in_channels, H, W)`` with an optional time embedding ``temb`` ``(B, temb_channels)``.

    ``time_embedding_norm="default"`` adds ``time_emb_proj(act(temb))`` after ``conv1``; ``"scale_shift"`` projects
    to ``2 * out_channels`` and applies ``norm2(h) * (1 + scale) + shift``. ``up``/``down`` resample both paths by
    2 (``kernel="fir"`` FIR filter, ``"sde_vp"`` nearest / average pool, else :class:`Upsample2D` /
    :class:`Downsample2D`). ``skip_time_act`` feeds ``temb`` to the projection without the activation.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        temb_channels: int | None = 512,
        groups: int = 32,
        groups_out: int | None = None,
        pre_norm: bool = True,
        eps: float = 1e-6,
        non_linearity: str = "swish",
        skip_time_act: bool = False,
        time_embedding_norm: str = "default",
        kernel: str | None = None,
        output_scale_factor: float = 1.0,
        use_in_shortcut: bool | None = None,
        up: bool = False,
        down: bool = False,
        conv_shortcut_bias: bool = True,
        conv_2d_out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if time_embedding_norm not in TIME_EMBEDDING_NORMS:
            raise ValueError(
                f"time_embedding_norm={time_embedding_norm!r} is not supported by ResnetBlock2D; "
                f"use one of {TIME_EMBEDDING_NORMS}"
            )
        out_channels = in_channels if out_channels is None else out_channels
        groups_out = groups if groups_out is None else groups_out
        for name, channels, g in (("groups", in_channels, groups), ("groups_out", out_channels, groups_out)):
            if not isinstance(g, int) or g < 1 or channels % g != 0:
                raise ValueError(f"{name}={g!r} must be a positive int dividing the block's {channels} channels")
        self.pre_norm = True
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut
        self.up, self.down = up, down
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm
        self.skip_time_act = skip_time_act

        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels is None:
            self.time_emb_proj = None
        else:
            proj_out = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
            self.time_emb_proj = nn.Linear(temb_channels, proj_out)
        self.norm2 = nn.GroupNorm(groups_out, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        conv_2d_out_channels = conv_2d_out_channels or out_channels
        self.conv2 = nn.Conv2d(out_channels, conv_2d_out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(non_linearity)

        self.upsample = self.downsample = None
        if up:
            if kernel == "fir":
                self.upsample = functools.partial(fir_upsample_2d, kernel=(1, 3, 3, 1))
            elif kernel == "sde_vp":
                self.upsample = functools.partial(F.interpolate, scale_factor=2.0, mode="nearest")
            else:
                self.upsample = Upsample2D(in_channels, use_conv=False)
        elif down:
            if kernel == "fir":
                self.downsample = functools.partial(fir_downsample_2d, kernel=(1, 3, 3, 1))
            elif kernel == "sde_vp":
                self.downsample = functools.partial(F.avg_pool2d, kernel_size=2, stride=2)
            else:
                self.downsample = Downsample2D(in_channels, use_conv=False, padding=1, name="op")

        self.use_in_shortcut = in_channels != conv_2d_out_channels if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = (
            nn.Conv2d(in_channels, conv_2d_out_channels, kernel_size=1, bias=conv_shortcut_bias)
            if self.use_in_shortcut
            else None
        )

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H', W')`` (H' = 2H with ``up``, H/2 with ``down``)."""
        hidden = group_norm_act(input_tensor, self.norm1, self.nonlinearity)
        if self.upsample is not None:
            input_tensor, hidden = self.upsample(input_tensor), self.upsample(hidden)
        elif self.downsample is not None:
            input_tensor, hidden = self.downsample(input_tensor), self.downsample(hidden)
        hidden = conv2d(self.conv1, hidden)

        if self.time_emb_proj is not None and temb is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        elif self.time_embedding_norm == "scale_shift":
            raise ValueError("temb is required by a ResnetBlock2D with time_embedding_norm='scale_shift'")
        else:
            temb = None

        if self.time_embedding_norm == "default":
            if temb is not None:
                hidden = residual_add(hidden, temb)
            hidden = group_norm_act(hidden, self.norm2, self.nonlinearity)
        else:
            scale, shift = temb.chunk(2, dim=1)
            hidden = group_norm_act(hidden, self.norm2, None)
            if _graph(hidden, scale):
                hidden = hidden * (1 + scale) + shift
            else:
                hidden = hidden.mul_(1 + scale).add_(shift)
            hidden = self.nonlinearity(hidden)

        if self.dropout.p > 0 and self.training:
            hidden = self.dropout(hidden)
        hidden = conv2d(self.conv2, hidden)
        if self.conv_shortcut is not None:
            input_tensor = conv2d(self.conv_shortcut, input_tensor)
        return residual_add(hidden, input_tensor, self.output_scale_factor)
