"""FreeU (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net"): re-weight a UNet decoder's two inputs.

In the first two up levels (the lowest resolutions), before each skip is concatenated, the backbone features are
amplified (the first half of their channels times ``b1`` / ``b2``) and the skip features' lowest spatial
frequencies are damped (times ``s1`` / ``s2``). The factors live on the up blocks as attributes ``s1``, ``s2``,
``b1``, ``b2`` (as in Diffusers); :func:`set_freeu` sets or clears them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

FREEU_KEYS = ("s1", "s2", "b1", "b2")


def check_freeu_factors(**factors: float) -> None:
    """``ValueError`` naming the factor unless every one is a finite real number."""
    for name, value in factors.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")


def set_freeu(blocks: Iterable[nn.Module], factors: dict[str, float] | None) -> None:
    """Put the FreeU ``factors`` (``s1``, ``s2``, ``b1``, ``b2``) on every up block, or clear them (None)."""
    for block in blocks:
        for key in FREEU_KEYS:
            setattr(block, key, None if factors is None else factors[key])


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the centred ``2*threshold`` x ``2*threshold`` lowest-frequency box of ``x`` (B, C, H, W) by ``scale``
    (2-D FFT over H, W in float32); same shape and dtype out."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones(freq.shape[-2:], device=x.device)
    mask[h // 2 - threshold : h // 2 + threshold, w // 2 - threshold : w // 2 + threshold] = scale
    out = torch.fft.ifftn(torch.fft.ifftshift(freq * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(x.dtype)


def apply_freeu(block: nn.Module, hidden_states: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(backbone, skip) for the next concatenation of up block ``block``: unchanged unless FreeU is on and the
    block is one of the first two levels (``resolution_idx`` 0 or 1)."""
    level = getattr(block, "resolution_idx", None)
    if level not in (0, 1) or getattr(block, "s1", None) is None:
        return hidden_states, skip
    b, s = (block.b1, block.s1) if level == 0 else (block.b2, block.s2)
    half = hidden_states.shape[1] // 2
    hidden_states = torch.cat([hidden_states[:, :half] * b, hidden_states[:, half:]], dim=1)
    return hidden_states, fourier_filter(skip, threshold=1, scale=s)
