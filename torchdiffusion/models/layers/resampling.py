"""Resolution changes by a factor of 2: ``Downsample2D`` (stride-2 conv or average pool), ``Upsample2D``
(nearest x2, then an optional conv, or a transposed conv) and the FIR-filtered variants used by score-SDE
skip blocks (``FirDownsample2D`` / ``FirUpsample2D``, Karras et al. 2019 ``upfirdn2d``).

Keys match Diffusers: ``Downsample2D(name="op")`` keeps its conv at ``conv``; ``Upsample2D(name="conv")`` at
``conv``, any other name at ``Conv2d_0``; FIR layers keep theirs at ``Conv2d_0``. All inputs ``(B, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import conv2d, upsample_conv


def _fir_kernel(kernel: Sequence[float] | None, factor: int, gain: float) -> torch.Tensor:
    """A normalised 2-D FIR kernel (outer product of a 1-D one), scaled by ``gain``."""
    k = torch.tensor(list(kernel) if kernel is not None else [1.0] * factor, dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    return k / k.sum() * gain


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)):
    """Upsample by zero insertion (``up``), pad (``pad`` = before, after; same for both axes), convolve each channel
    with ``kernel`` ``(kh, kw)`` and keep every ``down``-th pixel. ``(B, C, H, W)`` in and out."""
    batch, channels, height, width = x.shape
    if up > 1:
        spread = x.new_zeros(batch, channels, height * up, width * up)
        spread[:, :, ::up, ::up] = x
        x = spread
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = torch.flip(kernel, [0, 1]).to(x).expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=channels)


def fir_upsample_2d(x: torch.Tensor, kernel: Sequence[float] | None = None, factor: int = 2, gain: float = 1.0):
    """Upsample ``(B, C, H, W)`` by ``factor`` with a FIR filter (default: nearest neighbour)."""
    k = _fir_kernel(kernel, factor, gain * factor**2)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample_2d(x: torch.Tensor, kernel: Sequence[float] | None = None, factor: int = 2, gain: float = 1.0):
    """Downsample ``(B, C, H, W)`` by ``factor`` with a FIR filter (default: average pooling)."""
    k = _fir_kernel(kernel, factor, gain)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


class Downsample2D(nn.Module):
    """Halve H and W: a stride-2 ``kernel_size`` conv (``use_conv``) or 2x2 average pooling.

    With ``padding=0`` the input is padded by one pixel on the right and bottom only (the VAE's asymmetric pad).
    """

    def __init__(
        self,
        channels: int,
        use_conv: bool = False,
        out_channels: int | None = None,
        padding: int = 1,
        name: str = "conv",
        kernel_size: int = 3,
        norm_type: str | None = None,
        eps: float | None = None,
        elementwise_affine: bool | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if norm_type is not None:
            raise ValueError(f"norm_type={norm_type!r} is not supported by Downsample2D; use None")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        self.name = name
        if use_conv:
            conv: nn.Module = nn.Conv2d(channels, self.out_channels, kernel_size, stride=2, padding=padding, bias=bias)
        else:
            if self.out_channels != channels:
                raise ValueError(f"out_channels={out_channels} must equal channels={channels} without use_conv")
            conv = nn.AvgPool2d(kernel_size=2, stride=2)
        if name == "conv":  # Diffusers registers the same conv under both names; the state dict has both keys
            self.Conv2d_0 = conv
        self.conv = conv

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"Downsample2D expects {self.channels} channels, got shape {tuple(hidden_states.shape)}")
        if not self.use_conv:
            return self.conv(hidden_states)
        if self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1))
        return conv2d(self.conv, hidden_states)


class Upsample2D(nn.Module):
    """Double H and W: nearest-neighbour (to ``output_size`` when given), then an optional conv; or a stride-2
    transposed conv (``use_conv_transpose``)."""

    def __init__(
        self,
        channels: int,
        use_conv: bool = False,
        use_conv_transpose: bool = False,
        out_channels: int | None = None,
        name: str = "conv",
        kernel_size: int | None = None,
        padding: int = 1,
        norm_type: str | None = None,
        eps: float | None = None,
        elementwise_affine: bool | None = None,
        bias: bool = True,
        interpolate: bool = True,
    ) -> None:
        super().__init__()
        if norm_type is not None:
            raise ValueError(f"norm_type={norm_type!r} is not supported by Upsample2D; use None")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_conv_transpose = use_conv_transpose
        self.name = name
        self.interpolate = interpolate
        conv: nn.Module | None = None
        if use_conv_transpose:
            conv = nn.ConvTranspose2d(
                channels, self.out_channels, kernel_size or 4, stride=2, padding=padding, bias=bias
            )
        elif use_conv:
            conv = nn.Conv2d(channels, self.out_channels, kernel_size or 3, padding=padding, bias=bias)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def forward(
        self, hidden_states: torch.Tensor, output_size: Sequence[int] | None = None, *args, **kwargs
    ) -> torch.Tensor:
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"Upsample2D expects {self.channels} channels, got shape {tuple(hidden_states.shape)}")
        conv = self.conv if self.name == "conv" else self.Conv2d_0
        if self.use_conv_transpose:
            return conv(hidden_states)
        if self.use_conv and self.interpolate and (output_size is None or tuple(output_size) == (
            2 * hidden_states.shape[-2], 2 * hidden_states.shape[-1])):  # fmt: skip
            fused = upsample_conv(conv, hidden_states)
            if fused is not None:
                return fused
        if self.interpolate:
            if output_size is None:
                hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
            else:
                hidden_states = F.interpolate(hidden_states, size=tuple(output_size), mode="nearest")
        if self.use_conv:
            hidden_states = conv2d(conv, hidden_states)
        return hidden_states


class FirDownsample2D(nn.Module):
    """FIR-filtered 2x downsampling; with ``use_conv`` a 3x3 conv (key ``Conv2d_0``) fused with the filter."""

    def __init__(
        self,
        channels: int | None = None,
        out_channels: int | None = None,
        use_conv: bool = False,
        fir_kernel: Sequence[int] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.Conv2d_0 = nn.Conv2d(channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.fir_kernel = tuple(fir_kernel)
        self.use_conv = use_conv
        self.out_channels = out_channels

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.use_conv:
            return fir_downsample_2d(hidden_states, self.fir_kernel)
        k = _fir_kernel(self.fir_kernel, 2, 1.0)
        weight = self.Conv2d_0.weight
        p = (k.shape[0] - 2) + (weight.shape[-1] - 1)
        filtered = upfirdn2d(hidden_states, k, pad=((p + 1) // 2, p // 2))
        return F.conv2d(filtered, weight, stride=2) + self.Conv2d_0.bias.reshape(1, -1, 1, 1)


class FirUpsample2D(nn.Module):
    """FIR-filtered 2x upsampling; with ``use_conv`` a transposed 3x3 conv (key ``Conv2d_0``) then the filter."""

    def __init__(
        self,
        channels: int | None = None,
        out_channels: int | None = None,
        use_conv: bool = False,
        fir_kernel: Sequence[int] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.Conv2d_0 = nn.Conv2d(channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.fir_kernel = tuple(fir_kernel)
        self.use_conv = use_conv
        self.out_channels = out_channels

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.use_conv:
            return fir_upsample_2d(hidden_states, self.fir_kernel)
        factor = 2
        k = _fir_kernel(self.fir_kernel, factor, factor**2)
        weight = self.Conv2d_0.weight  # (out, in, kh, kw) used as the transposed conv's (in, out) kernel, flipped
        kh, kw = weight.shape[-2:]
        p = (k.shape[0] - factor) - (kw - 1)
        flipped = torch.flip(weight, dims=[2, 3]).transpose(0, 1)
        inverse = F.conv_transpose2d(hidden_states, flipped, stride=factor)
        out = upfirdn2d(inverse, k, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))
        return out + self.Conv2d_0.bias.reshape(1, -1, 1, 1)
