"""Timestep and class embeddings: sinusoidal (DDPM / Transformer positional), Gaussian Fourier features and the
two-layer MLP that maps them to the UNet's time-embedding width. Keys follow Diffusers (``linear_1``,
``linear_2``, ``cond_proj``; ``weight`` for the Fourier frequencies).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .activations import get_activation


def sinusoidal_frequencies(
    half_dim: int, downscale_freq_shift: float = 1.0, max_period: float = 10000.0, device=None
) -> torch.Tensor:
    """``exp(-ln(max_period) * i / (half_dim - shift))`` for ``i < half_dim`` (float32, shape ``(half_dim,)``)."""
    exponent = -math.log(max_period) * torch.arange(half_dim, dtype=torch.float32, device=device)
    return torch.exp(exponent / (half_dim - downscale_freq_shift))


def get_timestep_embedding(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: int = 10000,
    frequencies: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sinusoidal embedding of 1-D ``timesteps`` ``(N,)`` (may be fractional) -> ``(N, embedding_dim)`` float32.

    Layout ``[sin, cos]`` (``[cos, sin]`` with ``flip_sin_to_cos``); an odd ``embedding_dim`` gets a zero column.
    ``frequencies`` may pass precomputed :func:`sinusoidal_frequencies` (saves the ``exp`` per call).
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor of shape (N,), got shape {tuple(timesteps.shape)}")
    half_dim = embedding_dim // 2
    if frequencies is None:
        frequencies = sinusoidal_frequencies(half_dim, downscale_freq_shift, max_period, timesteps.device)
    angles = timesteps[:, None].float() * frequencies.to(timesteps.device)[None, :]
    if scale != 1:
        angles = scale * angles
    parts = (torch.cos(angles), torch.sin(angles)) if flip_sin_to_cos else (torch.sin(angles), torch.cos(angles))
    emb = torch.cat(parts, dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


class Timesteps(nn.Module):
    """``(N,)`` timesteps -> ``(N, num_channels)`` sinusoidal features (no parameters; the frequencies are a
    non-persistent buffer, so the state dict is empty as in Diffusers)."""

    def __init__(
        self,
        num_channels: int,
        flip_sin_to_cos: bool,
        downscale_freq_shift: float,
        scale: float = 1,
        max_period: int = 10000,
    ) -> None:
        super().__init__()
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels={num_channels!r} must be a positive int")
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale
        self.max_period = max_period
        freqs = sinusoidal_frequencies(num_channels // 2, downscale_freq_shift, max_period)
        self.register_buffer("frequencies", freqs, persistent=False)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        freqs = self.frequencies if self.frequencies.dtype == torch.float32 else None  # recompute after .half()
        return get_timestep_embedding(
            timesteps,
            self.num_channels,
            flip_sin_to_cos=self.flip_sin_to_cos,
            downscale_freq_shift=self.downscale_freq_shift,
            scale=self.scale,
            max_period=self.max_period,
            frequencies=freqs,
        )


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of noise levels (Song et al. 2021): ``x -> [sin(2 pi x w), cos(2 pi x w)]`` with a
    frozen ``weight`` ``(embedding_size,)`` drawn from ``N(0, scale^2)``; ``log`` applies ``log(x)`` first.
    Output ``(N, 2 * embedding_size)``. ``set_W_to_weight`` is accepted for signature compatibility; the key is
    ``weight`` either way (as in Diffusers' saved checkpoints)."""

    def __init__(
        self,
        embedding_size: int = 256,
        scale: float = 1.0,
        set_W_to_weight: bool = True,
        log: bool = True,
        flip_sin_to_cos: bool = False,
    ) -> None:
        super().__init__()
        if set_W_to_weight:
            torch.randn(embedding_size)  # Diffusers draws twice here; keep seeded inits identical
        self.weight = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)
        self.log = log
        self.flip_sin_to_cos = flip_sin_to_cos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log:
            x = torch.log(x)
        proj = x[:, None] * self.weight[None, :] * 2 * math.pi
        parts = (torch.cos(proj), torch.sin(proj)) if self.flip_sin_to_cos else (torch.sin(proj), torch.cos(proj))
        return torch.cat(parts, dim=-1)


class TimestepEmbedding(nn.Module):
    """MLP ``linear_1 -> act -> linear_2 (-> post_act)`` from ``(N, in_channels)`` to ``(N, out_dim or
    time_embed_dim)``. ``cond_proj_dim`` adds a bias-free ``cond_proj`` whose output is added to the input (LCM)."""

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        act_fn: str = "silu",
        out_dim: int | None = None,
        post_act_fn: str | None = None,
        cond_proj_dim: int | None = None,
        sample_proj_bias: bool = True,
    ) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim, sample_proj_bias)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim, sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("condition was given but this TimestepEmbedding has no cond_proj (cond_proj_dim=None)")
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        return self.post_act(sample) if self.post_act is not None else sample
