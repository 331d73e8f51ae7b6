"""Image and mask inputs of the Stable Diffusion pipelines: PIL, numpy or tensors -> model-ready tensors.

Accepted for ``image`` (and ``mask_image``): a PIL image or a list of them; a numpy array (H, W), (H, W, C) or
(B, H, W, C) with values in [0, 1], or a list of them; a tensor (H, W), (C, H, W) or (B, C, H, W) in [0, 1], or a
list of them. Tensors already in [-1, 1] are taken as normalized (as Diffusers does, with a warning).
PIL images are resized with Lanczos, arrays and tensors with nearest-neighbour interpolation, to ``height`` x
``width`` (by default the input size rounded down to a multiple of the VAE scale factor).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...utils.images import image_kind, image_list, stack_arrays, stack_tensors


def _default_size(height: int | None, width: int | None, size: tuple[int, int], factor: int) -> tuple[int, int]:
    h = size[0] if height is None else height
    w = size[1] if width is None else width
    return h - h % factor, w - w % factor


def _load(images: Any, name: str, height, width, factor: int, grayscale: bool, latent_channels: int | None):
    """(B, C, H, W) float tensor in [0, 1] (or latents when a tensor has ``latent_channels`` channels)."""
    items = image_list(images, name)
    kind = image_kind(items, name)
    if kind == "pil":
        h, w = _default_size(height, width, (items[0].height, items[0].width), factor)
        mode = "L" if grayscale else "RGB"
        from PIL import Image

        resized = [im.convert(mode).resize((w, h), resample=Image.Resampling.LANCZOS) for im in items]
        arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in resized]
        arrays = [a[:, :, None] if a.ndim == 2 else a for a in arrays]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), False
    x = stack_arrays(items, grayscale, name) if kind == "np" else stack_tensors(items, grayscale, name)
    if latent_channels is not None and kind == "pt" and x.shape[1] == latent_channels:
        return x, True
    h, w = _default_size(height, width, (x.shape[2], x.shape[3]), factor)
    if h < factor or w < factor:
        raise ValueError(f"{name} of size {tuple(x.shape[2:])} is smaller than the VAE scale factor {factor}")
    if (h, w) != tuple(x.shape[2:]):
        x = F.interpolate(x, size=(h, w))
    return x, False


def expand_to_batch(x: torch.Tensor, total: int, name: str) -> torch.Tensor:
    """Repeat a batch of ``k`` rows to ``total`` rows (``total`` must be a multiple of ``k``)."""
    if x.shape[0] == total:
        return x
    if total % x.shape[0]:
        raise ValueError(f"{name} has {x.shape[0]} images, which does not divide the {total} images asked for")
    return x.repeat(total // x.shape[0], *([1] * (x.ndim - 1)))


def preprocess_image(
    image: Any,
    height: int | None = None,
    width: int | None = None,
    vae_scale_factor: int = 8,
    latent_channels: int | None = 4,
    name: str = "image",
) -> torch.Tensor:
    """Images -> float tensor (B, 3, H, W) in [-1, 1]; a tensor with ``latent_channels`` channels is returned as is
    (it is taken to be VAE latents)."""
    x, is_latent = _load(image, name, height, width, vae_scale_factor, False, latent_channels)
    if is_latent:
        return x
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels (RGB), got {x.shape[1]}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.min() < 0:
        warnings.warn(
            f"{name} has values below 0; taking it as already in [-1, 1] (pass images in [0, 1])",
            FutureWarning,
            stacklevel=3,
        )
        return x
    return 2.0 * x - 1.0


def preprocess_mask(
    mask_image: Any, height: int | None = None, width: int | None = None, vae_scale_factor: int = 8
) -> torch.Tensor:
    """Masks -> float tensor (B, 1, H, W) of 0 (keep) and 1 (repaint); values >= 0.5 count as 1."""
    x, _ = _load(mask_image, "mask_image", height, width, vae_scale_factor, True, None)
    if x.shape[1] in (3, 4):  # RGB(A) arrays: luma, as PIL's convert("L")
        x = (x[:, :3] * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    if x.shape[1] != 1:
        raise ValueError(f"mask_image must have one channel (or RGB), got {x.shape[1]} channels")
    return (x >= 0.5).to(x.dtype)
