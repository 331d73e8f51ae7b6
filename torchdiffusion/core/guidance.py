"""Classifier-free guidance (Ho & Salimans 2022) and guidance rescale (Lin et al. 2023, sec. 3.4)."""

from __future__ import annotations

import torch


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``: scale 1 gives ``cond``; larger follows the condition harder."""
    return uncond + scale * (cond - uncond)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Pull the guided prediction's per-sample std back towards the conditional one (fixes over-exposure).

    ``rescale`` in [0, 1] blends the std-matched prediction with the plain guided one (eq. 15-16).
    """
    if rescale <= 0:
        return guided
    dims = list(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    matched = guided * (std_cond / std_guided)
    return rescale * matched + (1 - rescale) * guided
