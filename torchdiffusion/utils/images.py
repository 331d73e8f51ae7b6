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
    return numpy_to_pt(pil_to_numpy(images)).contiguous()


def pil_to_numpy(images: Any) -> np.ndarray:
    """PIL image(s) -> float32 array (batch, height, width, channels) in [0, 1]; (batch, height, width) for
    single-channel images (as Diffusers' ``VaeImageProcessor.pil_to_numpy``)."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])


def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
    """(batch, height, width[, channels]) array -> tensor (batch, channels, height, width); no copy, no scaling."""
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(images.transpose(0, 3, 1, 2))


# ---- reading user images: PIL, numpy or tensors, one or a list ---------------------------------------------


def image_list(images: Any, name: str) -> list:
    """``images`` as a list (one image, or the items of a list/tuple); ``ValueError`` naming ``name`` if empty."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name} is an empty list")
        return list(images)
    return [images]


def image_kind(items: list, name: str) -> str:
    """ "pil", "np" or "pt": the one kind of image in ``items`` (PIL images, or arrays/tensors with 2 to 4
    dimensions); ``ValueError`` naming ``name`` for anything else or a mix."""
    from PIL import Image

    kinds = set()
    for item in items:
        if isinstance(item, Image.Image):
            kinds.add("pil")
        elif isinstance(item, np.ndarray) and item.ndim in (2, 3, 4):
            kinds.add("np")
        elif isinstance(item, torch.Tensor) and item.ndim in (2, 3, 4):
            kinds.add("pt")
        else:
            shape = f" with shape {tuple(item.shape)}" if hasattr(item, "shape") else ""
            raise ValueError(
                f"{name} must be PIL images, numpy arrays or torch tensors with 2 to 4 dimensions (or a list of "
                f"them); got {type(item).__name__}{shape}"
            )
    if len(kinds) > 1:
        raise ValueError(f"{name} mixes {sorted(kinds)}; pass one kind of image")
    return kinds.pop()


def stack_arrays(items: list, grayscale: bool, name: str) -> torch.Tensor:
    """numpy arrays -> float tensor (B, C, H, W)."""
    batch = []
    for a in items:
        a = np.asarray(a, dtype=np.float32)
        if a.ndim == 2:
            a = a[None, :, :, None]
        elif a.ndim == 3:
            # (H, W, C) for images; masks may also come as a batch (B, H, W) of single-channel masks.
            a = a[..., None] if grayscale and a.shape[-1] not in (1, 3, 4) else a[None]
        batch.append(a)
    shapes = {b.shape[1:] for b in batch}
    if len(shapes) > 1:
        raise ValueError(f"{name}: all images must have the same size, got {sorted(shapes)}")
    return torch.from_numpy(np.concatenate(batch)).permute(0, 3, 1, 2).contiguous()


def stack_tensors(items: list, grayscale: bool, name: str) -> torch.Tensor:
    """tensors -> float tensor (B, C, H, W)."""
    batch = []
    for t in items:
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[:, None] if grayscale else t[None]
        batch.append(t)
    shapes = {tuple(b.shape[1:]) for b in batch}
    if len(shapes) > 1:
        raise ValueError(f"{name}: all images must have the same size, got {sorted(shapes)}")
    out = torch.cat(batch)
    return out if out.is_floating_point() else out.float() / 255.0


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
