"""Image conversion between tensors, numpy arrays and PIL images, and image grids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_output_type(output_type: Any, allowed: Sequence[str] = ("pil", "np", "pt")) -> str:
    """``ValueError`` naming ``output_type`` unless it is one of ``allowed``."""
    if output_type not in allowed:
        raise ValueError(f"output_type must be one of {list(allowed)}, got {output_type!r}")
    return output_type


def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
    """(batch, channels, height, width) tensor -> (batch, height, width, channels) float32 array."""
    return images.detach().float().cpu().permute(0, 2, 3, 1).numpy()


def numpy_to_pil(images: np.ndarray) -> list:
    """(batch, height, width, channels) or (height, width, channels) array in [0, 1] -> list of PIL images."""
    from PIL import Image

    if images.ndim == 3:
        images = images[None]
    arr = (np.clip(images, 0.0, 1.0) * 255).round().astype("uint8")
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a) for a in arr]


def postprocess(images: torch.Tensor, output_type: str = "pil", do_denormalize: bool = True) -> Any:
    """Model-space images (batch, channels, height, width) in [-1, 1] -> ``output_type``, values in [0, 1]."""
    check_output_type(output_type, ("pil", "np", "pt"))
    if do_denormalize:
        images = (images / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    arr = pt_to_numpy(images)
    return arr if output_type == "np" else numpy_to_pil(arr)


def pil_to_tensor(images: Any) -> torch.Tensor:
    """PIL image(s) -> float tensor (batch, channels, height, width) in [0, 1]."""
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]
    arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def make_image_grid(images: Sequence[Any], rows: int, cols: int, resize: int | None = None):
    """Paste ``rows * cols`` PIL images into one grid image (row by row). ``resize`` makes each square first."""
    from PIL import Image

    if not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a positive int, got {rows!r}")
    if not isinstance(cols, int) or cols < 1:
        raise ValueError(f"cols must be a positive int, got {cols!r}")
    images = list(images)
    if len(images) != rows * cols:
        raise ValueError(f"images has {len(images)} images but rows*cols = {rows * cols}")
    if not all(isinstance(im, Image.Image) for im in images):
        raise TypeError("images must all be PIL images (use output_type='pil')")
    if resize is not None:
        images = [im.resize((resize, resize)) for im in images]
    w, h = images[0].size
    grid = Image.new(images[0].mode if images[0].mode in ("L", "RGB", "RGBA") else "RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, box=((i % cols) * w, (i // cols) * h))
    return grid
