"""The halves of a KL autoencoder (Stable Diffusion's VAE) and the diagonal Gaussian it encodes to.

``Encoder``: image ``(B, C, H, W)`` -> moments ``(B, 2 * latent, H / f, W / f)`` (mean and log-variance), with
``f = 2 ** (len(block_out_channels) - 1)``. ``Decoder``: latents ``(B, latent, h, w)`` -> ``(B, C, h * f, w * f)``.
State-dict keys follow Diffusers (``conv_in``, ``down_blocks.i``, ``mid_block``, ``up_blocks.i``, ``conv_norm_out``,
``conv_out``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..utils.outputs import BaseOutput
from ..utils.torch_utils import GeneratorArg, randn_tensor
from .layers.activations import get_activation
from .layers.cpu_kernels import conv2d, group_norm_act, use_channels_last
from .layers.unet_2d_blocks import DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D
from .modeling import checkpointed


@dataclass
class DecoderOutput(BaseOutput):
    """``sample``: the decoded images ``(B, C, H, W)``; ``commit_loss``: unused by KL autoencoders (None)."""

    sample: torch.Tensor
    commit_loss: torch.Tensor | None = None


def _check_blocks(types: Sequence[str], allowed: str, name: str, n: int) -> None:
    bad = [t for t in types if t != allowed]
    if bad or len(types) != n:
        raise ValueError(
            f"{name}={tuple(types)!r} must list {n} blocks (one per block_out_channels entry), all {allowed!r}"
        )


class Encoder(nn.Module):
    """Image -> latent moments: conv_in, DownEncoderBlock2D per level (stride-2 conv between levels), a mid block
    (resnet, attention, resnet), GroupNorm, SiLU, conv_out to ``2 * out_channels`` (``double_z``) channels."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        double_z: bool = True,
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        _check_blocks(down_block_types, "DownEncoderBlock2D", "down_block_types", len(block_out_channels))
        self.layers_per_block = layers_per_block
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(
                in_channels=block_out_channels[max(i - 1, 0)],
                out_channels=channels,
                num_layers=layers_per_block,
                resnet_eps=1e-6,
                resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups,
                add_downsample=i < len(block_out_channels) - 1,
                downsample_padding=0,
            )
            for i, channels in enumerate(block_out_channels)
        )
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1],
            temb_channels=None,
            resnet_eps=1e-6,
            resnet_act_fn=act_fn,
            output_scale_factor=1,
            resnet_time_scale_shift="default",
            attention_head_dim=block_out_channels[-1],
            resnet_groups=norm_num_groups,
            add_attention=mid_block_add_attention,
        )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, 2 * out_channels, H / f, W / f)``."""
        sample = conv2d(self.conv_in, _layout(sample, self))
        for block in self.down_blocks:
            sample = checkpointed(self, block, sample)
        sample = checkpointed(self, self.mid_block, sample)
        return conv2d(self.conv_out, group_norm_act(sample, self.conv_norm_out, self.conv_act)).contiguous()


class Decoder(nn.Module):
    """Latents -> image: conv_in, a mid block, UpDecoderBlock2D per level (nearest x2 + conv between levels),
    GroupNorm, SiLU, conv_out."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        up_block_types: Sequence[str] = ("UpDecoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        _check_blocks(up_block_types, "UpDecoderBlock2D", "up_block_types", len(block_out_channels))
        if norm_type != "group":
            raise ValueError(f"norm_type={norm_type!r} is not supported; only 'group' (spatial norm is MoVQ's)")
        self.layers_per_block = layers_per_block
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(in_channels, reversed_channels[0], kernel_size=3, padding=1)
        self.up_blocks = nn.ModuleList()  # registered before the mid block, as in Diffusers (same parameter order)
        self.mid_block = UNetMidBlock2D(
            in_channels=reversed_channels[0],
            temb_channels=None,
            resnet_eps=1e-6,
            resnet_act_fn=act_fn,
            output_scale_factor=1,
            resnet_time_scale_shift="default",
            attention_head_dim=reversed_channels[0],
            resnet_groups=norm_num_groups,
            add_attention=mid_block_add_attention,
        )
        self.up_blocks.extend(
            UpDecoderBlock2D(
                in_channels=reversed_channels[max(i - 1, 0)],
                out_channels=channels,
                num_layers=layers_per_block + 1,
                resnet_eps=1e-6,
                resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups,
                add_upsample=i < len(reversed_channels) - 1,
                temb_channels=None,
                resolution_idx=i,
            )
            for i, channels in enumerate(reversed_channels)
        )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, in_channels, h, w)`` -> ``(B, out_channels, h * f, w * f)``."""
        if latent_embeds is not None:
            raise ValueError("latent_embeds is only used by spatial-norm decoders, which are not supported")
        sample = conv2d(self.conv_in, _layout(sample, self))
        sample = checkpointed(self, self.mid_block, sample)
        for block in self.up_blocks:
            sample = checkpointed(self, block, sample)
        return conv2d(self.conv_out, group_norm_act(sample, self.conv_norm_out, self.conv_act)).contiguous()


def _layout(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Channels-last feature maps for CPU inference (the layers' fast path; see ``use_channels_last``); outputs go
    back to plain NCHW."""
    return x.contiguous(memory_format=torch.channels_last) if use_channels_last(x, model) else x


class DiagonalGaussianDistribution:
    """``N(mean, diag(exp(logvar)))`` from moments ``(B, 2 * C, h, w)`` (mean first, log-variance clamped to
    [-30, 20]). ``deterministic`` makes it a point mass at ``mean`` (``std = var = 0``)."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False) -> None:
        if not torch.is_tensor(parameters) or parameters.ndim < 2 or parameters.shape[1] % 2:
            shape = tuple(parameters.shape) if torch.is_tensor(parameters) else type(parameters).__name__
            raise ValueError(f"parameters must be a tensor with an even channel count (mean, logvar), got {shape}")
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: GeneratorArg = None) -> torch.Tensor:
        """``mean + std * eps``; ``eps`` drawn on the CPU from ``generator`` (one per sample if a list)."""
        eps = randn_tensor(
            self.mean.shape, generator=generator, device=self.parameters.device, dtype=self.parameters.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(self || other) per sample ``(B,)``; ``other=None`` means the standard normal."""
        if self.deterministic:
            return torch.zeros(1, device=self.mean.device)
        dims = list(range(1, self.mean.ndim))
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of ``sample`` summed over ``dims``."""
        if self.deterministic:
            return torch.zeros(1, device=self.mean.device)
        return 0.5 * torch.sum(
            math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var, dim=list(dims)
        )
