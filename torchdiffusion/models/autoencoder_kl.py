"""AutoencoderKL: Stable Diffusion's VAE, with Diffusers' arguments, config keys and state-dict keys.

``encode(x)`` -> ``AutoencoderKLOutput(latent_dist)``, a :class:`DiagonalGaussianDistribution` over latents
``(B, latent_channels, H / f, W / f)``; ``decode(z)`` -> ``DecoderOutput(sample)``. Latents go to the diffusion
model as ``(z - shift_factor) * scaling_factor`` (shift 0 when ``shift_factor`` is None) and come back with the
inverse; that scaling is the pipeline's job, the VAE only records the factors.

Slicing (``enable_slicing``) runs a batch one sample at a time; tiling (``enable_tiling``) runs large images in
overlapping tiles blended linearly across the overlap, as Diffusers does, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..configuration import ConfigMixin, register_to_config
from ..utils.outputs import BaseOutput
from ..utils.torch_utils import GeneratorArg
from .modeling import ModelMixin
from .vae import Decoder, DecoderOutput, DiagonalGaussianDistribution, Encoder

__all__ = ["AutoencoderKL", "AutoencoderKLOutput", "DecoderOutput", "DiagonalGaussianDistribution"]


@dataclass
class AutoencoderKLOutput(BaseOutput):
    """``latent_dist``: the posterior over latents (mean, std, ``sample(generator)``, ``mode()``, ``kl()``)."""

    latent_dist: DiagonalGaussianDistribution


class AutoencoderKL(ModelMixin, ConfigMixin):
    """Variational autoencoder with a KL-regularised latent space (Rombach et al. 2022, LDM). Layers are created in
    Diffusers' order: after ``torch.manual_seed(s)`` a new model starts from Diffusers' weights."""

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D"]
    # Diffusers < 0.14 named the mid-block attention weights query/key/value/proj_attn.
    _legacy_key_renames = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int | tuple[int, int] = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("latent_channels", latent_channels),
            ("layers_per_block", layers_per_block),
            ("norm_num_groups", norm_num_groups),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not block_out_channels or any(not isinstance(c, int) or c % norm_num_groups for c in block_out_channels):
            raise ValueError(
                f"block_out_channels={tuple(block_out_channels)!r} must be non-empty integers divisible by "
                f"norm_num_groups={norm_num_groups}"
            )
        self.encoder = Encoder(
            in_channels,
            latent_channels,
            down_block_types,
            block_out_channels,
            layers_per_block,
            norm_num_groups,
            act_fn,
            double_z=True,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.decoder = Decoder(
            latent_channels,
            out_channels,
            up_block_types,
            block_out_channels,
            layers_per_block,
            norm_num_groups,
            act_fn,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

        self.use_slicing = False
        self.use_tiling = False
        size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tile_sample_min_size = size
        self.tile_latent_min_size = int(size / 2 ** (len(block_out_channels) - 1))
        self.tile_overlap_factor = 0.25

    # ---- switches (Diffusers' names) --------------------------------------------------------------------
    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path_or_dict: object, **kwargs: object):
        """Load from an original LDM checkpoint file (see :mod:`torchdiffusion.single_file`); never downloads."""
        from ..single_file import load_model_from_single_file

        return load_model_from_single_file(cls, pretrained_model_link_or_path_or_dict, **kwargs)

    def enable_slicing(self) -> None:
        """Encode/decode a batch one sample at a time (less memory, same result)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Encode/decode images larger than ``tile_sample_min_size`` in overlapping, blended tiles."""
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # ---- encode ------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, name: str, channels: int, what: str) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a torch.Tensor {what}, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{name} must be {what} with {channels} channels, got shape {tuple(x.shape)}")

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return self._tiled_encode(x)
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Images ``(B, in_channels, H, W)`` (in [-1, 1]) -> posterior over ``(B, latent_channels, H/f, W/f)``."""
        self._check_input(x, "x", self.config.in_channels, "of shape (batch, channels, height, width)")
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(part) for part in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    # ---- decode ------------------------------------------------------------------------------------------
    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return self._tiled_decode(z)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def decode(
        self, z: torch.Tensor, return_dict: bool = True, generator: GeneratorArg = None
    ) -> DecoderOutput | tuple:
        """Latents ``(B, latent_channels, h, w)`` (unscaled) -> images ``(B, out_channels, h * f, w * f)``."""
        self._check_input(z, "z", self.config.latent_channels, "of shape (batch, latent_channels, height, width)")
        if self.use_slicing and z.shape[0] > 1:
            images = torch.cat([self._decode(part) for part in z.split(1)])
        else:
            images = self._decode(z)
        return DecoderOutput(sample=images) if return_dict else (images,)

    # ---- tiling ------------------------------------------------------------------------------------------
    def _tiled(
        self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile_in: int, tile_out: int
    ) -> torch.Tensor:
        """Run ``fn`` on ``tile_in``-sized tiles whose starts are ``tile_in * (1 - overlap)`` apart; each output tile
        is blended linearly into its upper and left neighbours over ``tile_out * overlap`` rows/columns (in place,
        row by row, the order Diffusers uses) and cropped to ``tile_out - blend``."""
        stride = int(tile_in * (1 - self.tile_overlap_factor))
        if stride < 1:
            raise ValueError(f"tile_overlap_factor={self.tile_overlap_factor} leaves no stride for tiles of {tile_in}")
        blend = int(tile_out * self.tile_overlap_factor)
        keep = tile_out - blend
        rows = [
            [fn(x[:, :, i : i + tile_in, j : j + tile_in]) for j in range(0, x.shape[3], stride)]
            for i in range(0, x.shape[2], stride)
        ]
        out_rows = []
        for i, row in enumerate(rows):
            out_row = []
            for j, tile in enumerate(row):
                if i > 0:
                    _blend(rows[i - 1][j], tile, blend, dim=2)
                if j > 0:
                    _blend(row[j - 1], tile, blend, dim=3)
                out_row.append(tile[:, :, :keep, :keep])
            out_rows.append(torch.cat(out_row, dim=3))
        return torch.cat(out_rows, dim=2)

    def _tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        def fn(tile: torch.Tensor) -> torch.Tensor:
            moments = self.encoder(tile)
            return self.quant_conv(moments) if self.quant_conv is not None else moments

        return self._tiled(x, fn, self.tile_sample_min_size, self.tile_latent_min_size)

    def _tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        def fn(tile: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.post_quant_conv(tile) if self.post_quant_conv is not None else tile)

        return self._tiled(z, fn, self.tile_latent_min_size, self.tile_sample_min_size)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Tiled :meth:`encode` regardless of ``use_tiling``."""
        self._check_input(x, "x", self.config.in_channels, "of shape (batch, channels, height, width)")
        posterior = DiagonalGaussianDistribution(self._tiled_encode(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Tiled :meth:`decode` regardless of ``use_tiling``."""
        self._check_input(z, "z", self.config.latent_channels, "of shape (batch, latent_channels, height, width)")
        images = self._tiled_decode(z)
        return DecoderOutput(sample=images) if return_dict else (images,)

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: GeneratorArg = None,
    ) -> DecoderOutput | tuple:
        """Reconstruct ``sample``: encode, take the posterior's mode (or a draw with ``sample_posterior``), decode."""
        self._check_input(sample, "sample", self.config.in_channels, "of shape (batch, channels, height, width)")
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        images = self.decode(z).sample
        return DecoderOutput(sample=images) if return_dict else (images,)


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> None:
    """Fade ``a``'s last ``extent`` slices along ``dim`` into ``b``'s first ones, writing into ``b``."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent <= 0:
        return
    w = torch.arange(extent, device=b.device, dtype=torch.float64) / extent
    shape = [1, 1, 1, 1]
    shape[dim] = extent
    w = w.view(shape)
    head = b.narrow(dim, 0, extent)
    tail = a.narrow(dim, a.shape[dim] - extent, extent)
    head.copy_(tail * (1 - w).to(a.dtype) + head * w.to(b.dtype))
