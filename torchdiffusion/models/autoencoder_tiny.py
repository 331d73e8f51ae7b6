"""AutoencoderTiny: the tiny distilled autoencoder TAESD (Bohan 2023), with Diffusers' arguments, config keys and
state-dict keys (``encoder.layers.*``, ``decoder.layers.*``), so a ``taesd`` folder written by Diffusers loads
unchanged.

Both halves are plain stacks of 3x3 convolutions and small residual blocks (no normalisation, no attention), a
fraction of the cost of Stable Diffusion's KL autoencoder. ``encode(x)`` -> ``AutoencoderTinyOutput(latents)``
``(B, latent_channels, H / f, W / f)`` (no distribution: the latents are deterministic); ``decode(z)`` ->
``DecoderOutput(sample)`` ``(B, out_channels, H, W)`` in [-1, 1], ``f = 2 ** (len(block_out_channels) - 1)``.
TAESD's latents are on Stable Diffusion's scale already (``scaling_factor`` 1), so it drops into an SD pipeline as
``vae=``. On the CPU the feature maps are carried channels-last and each nearest-x2 upsampling + 3x3 convolution
pair runs in sub-pixel form; the results are the same as the plain layers'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..configuration import ConfigMixin, register_to_config
from ..utils.outputs import BaseOutput
from .layers.activations import get_activation
from .layers.cpu_kernels import conv2d, upsample_conv, use_channels_last
from .modeling import ModelMixin, checkpointed
from .vae import DecoderOutput

__all__ = ["AutoencoderTiny", "AutoencoderTinyOutput", "AutoencoderTinyBlock", "DecoderTiny", "EncoderTiny"]


@dataclass
class AutoencoderTinyOutput(BaseOutput):
    """``latents``: the encoded images ``(B, latent_channels, H / f, W / f)``."""

    latents: torch.Tensor


def _run(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)`` with channels-last maps on the CPU; a nearest x2 ``Upsample`` followed by a 3x3 conv runs as
    one sub-pixel convolution when :func:`upsample_conv` applies."""
    if use_channels_last(x, layers):
        x = x.contiguous(memory_format=torch.channels_last)
    mods = list(layers)
    i = 0
    while i < len(mods):
        layer = mods[i]
        following = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(layer, nn.Upsample) and isinstance(following, nn.Conv2d) and layer.mode == "nearest":
            fused = upsample_conv(following, x) if layer.scale_factor in (2, 2.0) else None
            if fused is not None:
                x, i = fused, i + 2
                continue
        x = conv2d(layer, x) if isinstance(layer, nn.Conv2d) else layer(x)
        i += 1
    return x


class AutoencoderTinyBlock(nn.Module):
    """Residual block ``(B, C_in, H, W) -> (B, C_out, H, W)``: ``relu(conv3(act(conv2(act(conv1(x))))) + skip(x))``;
    ``skip`` is a 1x1 conv without bias when the channel counts differ."""

    def __init__(self, in_channels: int, out_channels: int, act_fn: str) -> None:
        super().__init__()
        act = get_activation(act_fn)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            act,
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            act,
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )
        self.skip = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = conv2d(self.skip, x) if isinstance(self.skip, nn.Conv2d) else x
        return self.fuse(_run(self.conv, x) + skip)


class EncoderTiny(nn.Module):
    """Image ``(B, in_channels, H, W)`` in [-1, 1] -> latents. Level ``i``: a 3x3 conv (stride 2 and no bias after
    the first level) and ``num_blocks[i]`` :class:`AutoencoderTinyBlock`; a last 3x3 conv to ``out_channels``."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: tuple[int, ...], block_out_channels: tuple[int, ...],
        act_fn: str,
    ) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = []
        for i, (count, channels) in enumerate(zip(num_blocks, block_out_channels)):
            if i == 0:
                layers.append(nn.Conv2d(in_channels, channels, kernel_size=3, padding=1))
            else:
                layers.append(nn.Conv2d(channels, channels, kernel_size=3, padding=1, stride=2, bias=False))
            layers += [AutoencoderTinyBlock(channels, channels, act_fn) for _ in range(count)]
        layers.append(nn.Conv2d(block_out_channels[-1], out_channels, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TAESD works on images in [0, 1]
        return checkpointed(self, lambda y: _run(self.layers, (y + 1) / 2), x)


class DecoderTiny(nn.Module):
    """Latents ``(B, in_channels, h, w)`` -> image in [-1, 1]: soft clamp ``3 tanh(z / 3)``, a 3x3 conv and the
    activation, then per level ``num_blocks[i]`` :class:`AutoencoderTinyBlock`, an upsampling (all but the last
    level) and a 3x3 conv (no bias except the last, which maps to ``out_channels``)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: tuple[int, ...], block_out_channels: tuple[int, ...],
        upsampling_scaling_factor: int, act_fn: str, upsample_fn: str,
    ) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1),
            get_activation(act_fn),
        ]
        last = len(num_blocks) - 1
        for i, (count, channels) in enumerate(zip(num_blocks, block_out_channels)):
            layers += [AutoencoderTinyBlock(channels, channels, act_fn) for _ in range(count)]
            if i != last:
                layers.append(nn.Upsample(scale_factor=upsampling_scaling_factor, mode=upsample_fn))
            out = out_channels if i == last else channels
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=i == last))
        self.layers = nn.Sequential(*layers)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(x / 3) * 3
        return checkpointed(self, lambda y: _run(self.layers, y), x).mul(2).sub(1).contiguous()


class AutoencoderTiny(ModelMixin, ConfigMixin):
    """TAESD: a tiny autoencoder that encodes images to Stable Diffusion-compatible latents and decodes them.

    ``encoder_block_out_channels`` / ``num_encoder_blocks`` and ``decoder_block_out_channels`` /
    ``num_decoder_blocks`` give the channels and the number of residual blocks per level (equal lengths).
    ``latent_magnitude`` / ``latent_shift``: the map between raw latents and [0, 1] (:meth:`scale_latents`, used
    to store latents as bytes). ``scaling_factor`` / ``shift_factor``: the pipeline's latent scaling (1 and 0:
    TAESD's latents are used as they are). ``block_out_channels`` is recorded in the config (the decoder's), so a
    pipeline finds the scale factor as with ``AutoencoderKL``.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        act_fn: str = "relu",
        upsample_fn: str = "nearest",
        latent_channels: int = 4,
        upsampling_scaling_factor: int = 2,
        num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3),
        num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1),
        latent_magnitude: int = 3,
        latent_shift: float = 0.5,
        force_upcast: bool = False,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ) -> None:
        super().__init__()
        for name, channels, blocks in (
            ("encoder_block_out_channels", encoder_block_out_channels, num_encoder_blocks),
            ("decoder_block_out_channels", decoder_block_out_channels, num_decoder_blocks),
        ):
            if len(channels) == 0 or len(channels) != len(blocks):
                raise ValueError(f"{name}={tuple(channels)} must have one entry per level, as many as the block counts "
                                 f"{tuple(blocks)}")  # fmt: skip
            if len(set(channels)) != 1:  # the levels are chained without a channel change (TAESD's layout)
                raise ValueError(f"{name}={tuple(channels)} must repeat one channel count (levels keep their width)")
        if upsample_fn not in ("nearest", "linear", "bilinear", "bicubic", "nearest-exact"):
            raise ValueError(f"upsample_fn={upsample_fn!r} must be an interpolation mode such as 'nearest'")
        self.encoder = EncoderTiny(in_channels, latent_channels, num_encoder_blocks, encoder_block_out_channels, act_fn)
        self.decoder = DecoderTiny(
            latent_channels, out_channels, num_decoder_blocks, decoder_block_out_channels, upsampling_scaling_factor,
            act_fn, upsample_fn,
        )  # fmt: skip
        self.latent_magnitude = latent_magnitude
        self.latent_shift = latent_shift
        self.scaling_factor = scaling_factor
        self.use_slicing = False
        self.use_tiling = False
        self.spatial_scale_factor = upsampling_scaling_factor ** (len(decoder_block_out_channels) - 1)
        self.tile_overlap_factor = 0.125
        self.tile_sample_min_size = 512
        self.tile_latent_min_size = self.tile_sample_min_size // self.spatial_scale_factor
        self.register_to_config(block_out_channels=decoder_block_out_channels, force_upcast=False)

    # ---- latent scaling -----------------------------------------------------------------------------------
    def scale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Raw latents -> [0, 1]: ``clamp(x / (2 * latent_magnitude) + latent_shift, 0, 1)``."""
        return (x / (2 * self.latent_magnitude) + self.latent_shift).clamp(0, 1)

    def unscale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> raw latents (the inverse of :meth:`scale_latents` inside the clamp)."""
        return (x - self.latent_shift) * (2 * self.latent_magnitude)

    # ---- switches (Diffusers' names) ----------------------------------------------------------------------
    def enable_slicing(self) -> None:
        """Encode/decode a batch one sample at a time (less memory, same result)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Encode/decode in overlapping tiles (``tile_sample_min_size`` pixels), blended linearly across overlaps."""
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # ---- encode / decode ----------------------------------------------------------------------------------
    def _tiled(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, ratio: float,
               channels: int) -> torch.Tensor:  # fmt: skip
        """``fn`` over overlapping ``tile`` x ``tile`` windows of ``x`` whose outputs are ``ratio`` times as large,
        each blended into the result over the overlap by linear ramps (the first row/column of tiles unblended)."""
        blend = int(tile * self.tile_overlap_factor)
        tile_out, blend_out = round(tile * ratio), round(blend * ratio)
        ramp = (torch.arange(tile_out, device=x.device) / (blend_out - 1)).clamp(0, 1)
        height, width = round(x.shape[-2] * ratio), round(x.shape[-1] * ratio)
        out = torch.zeros(x.shape[0], channels, height, width, device=x.device, dtype=x.dtype)
        for i in range(0, x.shape[-2], tile - blend):
            for j in range(0, x.shape[-1], tile - blend):
                y = fn(x[..., i : i + tile, j : j + tile])
                h, w = y.shape[-2], y.shape[-1]
                top, left = round(i * ratio), round(j * ratio)
                rows = ramp[:h, None] if i else torch.ones(h, 1, device=x.device)
                cols = ramp[None, :w] if j else torch.ones(1, w, device=x.device)
                mask = (rows * cols).to(y.dtype)
                region = out[..., top : top + h, left : left + w]
                region.copy_(mask * y + (1 - mask) * region)
        return out

    def _per_slice(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([fn(part) for part in x.split(1)])
        return fn(x)

    def _check(self, x: torch.Tensor, name: str, channels: int, what: str) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a torch.Tensor {what}, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{name} must be {what} with {channels} channels, got shape {tuple(x.shape)}")

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderTinyOutput | tuple[torch.Tensor]:
        """Images ``(B, in_channels, H, W)`` in [-1, 1] -> latents ``(B, latent_channels, H / f, W / f)``."""
        self._check(x, "x", self.config.in_channels, "of images (batch, channels, height, width)")
        f = self.spatial_scale_factor

        def one(part: torch.Tensor) -> torch.Tensor:
            if self.use_tiling:
                return self._tiled(self.encoder, part, self.tile_sample_min_size, 1 / f, self.config.latent_channels)
            return self.encoder(part)

        latents = self._per_slice(one, x)
        return AutoencoderTinyOutput(latents=latents) if return_dict else (latents,)

    def decode(
        self, x: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents ``(B, latent_channels, h, w)`` -> images ``(B, out_channels, h * f, w * f)`` in [-1, 1]
        (``generator`` is accepted for interface compatibility and unused: decoding is deterministic)."""
        self._check(x, "x", self.config.latent_channels, "of latents (batch, channels, height, width)")
        f = self.spatial_scale_factor

        def one(part: torch.Tensor) -> torch.Tensor:
            if self.use_tiling:
                return self._tiled(self.decoder, part, self.tile_latent_min_size, f, self.config.out_channels)
            return self.decoder(part)

        images = self._per_slice(one, x)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Round trip ``(B, in_channels, H, W)``: encode, quantize the latents to bytes (as TAESD stores them),
        decode."""
        latents = self.encode(sample).latents
        as_bytes = (self.scale_latents(latents) * 255).round().byte()
        decoded = self.decode(self.unscale_latents(as_bytes / 255.0)).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)
