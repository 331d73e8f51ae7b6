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


def _as_list(images: Any, name: str) -> list:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name} is an empty list")
        return list(images)
    return [images]


def _check_kind(items: list, name: str) -> str:
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


def _default_size(height: int | None, width: int | None, size: tuple[int, int], factor: int) -> tuple[int, int]:
    h = size[0] if height is None else height
    w = size[1] if width is None else width
    return h - h % factor, w - w % factor


def _stack_arrays(items: list, grayscale: bool, name: str) -> torch.Tensor:
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


def _stack_tensors(items: list, grayscale: bool, name: str) -> torch.Tensor:
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


def _load(images: Any, name: str, height, width, factor: int, grayscale: bool, latent_channels: int | None):
    """(B, C, H, W) float tensor in [0, 1] (or latents when a tensor has ``latent_channels`` channels)."""
    items = _as_list(images, name)
    kind = _check_kind(items, name)
    if kind == "pil":
        h, w = _default_size(height, width, (items[0].height, items[0].width), factor)
        mode = "L" if grayscale else "RGB"
        from PIL import Image

        resized = [im.convert(mode).resize((w, h), resample=Image.Resampling.LANCZOS) for im in items]
        arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in resized]
        arrays = [a[:, :, None] if a.ndim == 2 else a for a in arrays]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), False
    x = _stack_arrays(items, grayscale, name) if kind == "np" else _stack_tensors(items, grayscale, name)
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


# ---- padding_mask_crop: inpaint only the region around the mask --------------------------------------------


def mask_crop_region(mask_image: Any, width: int, height: int, pad: int = 0) -> tuple[int, int, int, int]:
    """The box (x1, y1, x2, y2) to inpaint for ``padding_mask_crop``: the bounding box of the mask's non-zero
    pixels grown by ``pad`` pixels on each side (within the image), then grown along one axis to the aspect
    ratio ``width / height`` of the output, shifted back inside the image where it sticks out (Diffusers'
    rule, integer rounding included)."""
    mask = np.asarray(mask_image.convert("L"))
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        raise ValueError("mask_image is all black: padding_mask_crop needs a mask with something to repaint")
    h, w = mask.shape
    x1, x2 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + 1 + pad, w)
    y1, y2 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + 1 + pad, h)
    target = width / height
    if (x2 - x1) / (y2 - y1) > target:  # too wide: grow the height
        y1, y2 = _grow(y1, y2, int((x2 - x1) / target - (y2 - y1)), h)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * target - (x2 - x1)), w)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, extra: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) by ``extra`` (half before, half after), then slide it back into [0, limit)."""
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def resize_fill(image: Any, width: int, height: int) -> Any:
    """Fit a PIL image inside ``width`` x ``height`` keeping its aspect ratio (Lanczos), centred; the empty
    bands are filled by stretching the image's edge rows (or columns). Returns an RGB image."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    ratio, src_ratio = width / height, image.width / image.height
    fit_w = width if ratio < src_ratio else image.width * height // image.height
    fit_h = height if ratio >= src_ratio else image.height * width // image.width
    fitted = image.resize((fit_w, fit_h), resample=lanczos)
    out = Image.new("RGB", (width, height))
    out.paste(fitted, box=(width // 2 - fit_w // 2, height // 2 - fit_h // 2))
    if ratio < src_ratio:  # bands above and below, from the first and last rows
        band = height // 2 - fit_h // 2
        if band > 0:
            out.paste(fitted.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
            last = (0, fitted.height, width, fitted.height)
            out.paste(fitted.resize((width, band), box=last), box=(0, band + fit_h))
    elif ratio > src_ratio:  # bands left and right, from the first and last columns
        band = width // 2 - fit_w // 2
        if band > 0:
            out.paste(fitted.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
            last = (fitted.width, 0, fitted.width, height)
            out.paste(fitted.resize((band, height), box=last), box=(band + fit_w, 0))
    return out


def resize_cover(image: Any, width: int, height: int) -> Any:
    """Scale a PIL image (Lanczos, aspect kept) to cover ``width`` x ``height``, centred; the excess is cut."""
    from PIL import Image

    ratio, src_ratio = width / height, image.width / image.height
    fit_w = width if ratio > src_ratio else image.width * height // image.height
    fit_h = height if ratio <= src_ratio else image.height * width // image.width
    out = Image.new("RGB", (width, height))
    out.paste(
        image.resize((fit_w, fit_h), resample=Image.Resampling.LANCZOS),
        (width // 2 - fit_w // 2, height // 2 - fit_h // 2),
    )
    return out


def crop_for_inpainting(image: Any, mask_image: Any, box: tuple[int, int, int, int], width: int, height: int):
    """``image`` and ``mask_image`` (PIL) cut to ``box`` and fitted to ``width`` x ``height`` (see
    :func:`resize_fill`); the mask comes back in mode "L"."""
    return resize_fill(image.crop(box), width, height), resize_fill(mask_image.crop(box), width, height).convert("L")


def paste_inpainted(original: Any, mask_image: Any, inpainted: Any, box: tuple[int, int, int, int]) -> Any:
    """Put an inpainted crop (PIL, any size) back into ``box`` of ``original``: the crop is scaled to cover the
    box, then the original is laid over it where ``mask_image`` is black (blended where grey). RGB result."""
    from PIL import Image, ImageOps

    keep = Image.new("RGBa", original.size)  # the original, transparent where the mask is white
    keep.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_image.convert("L")))
    x1, y1, x2, y2 = box
    canvas = Image.new("RGBA", original.size)
    canvas.paste(resize_cover(inpainted, x2 - x1, y2 - y1), (x1, y1))
    result = canvas.convert("RGB").convert("RGBA")
    result.alpha_composite(keep.convert("RGBA"))
    return result.convert("RGB")
