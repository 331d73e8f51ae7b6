"""Regions of PIL images for inpainting: the crop box around a mask (``padding_mask_crop``), aspect-keeping
resizes that fill or cover a target size, and pasting an inpainted crop back over the original.

These follow Diffusers' ``VaeImageProcessor`` rules (integer rounding included), so crops and overlays match.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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


def resize_fill(image: Any, width: int, height: int, resample: Any = None) -> Any:
    """Fit a PIL image inside ``width`` x ``height`` keeping its aspect ratio (``resample``, default Lanczos),
    centred; the empty bands are filled by stretching the image's edge rows (or columns). Returns an RGB image."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS if resample is None else resample
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


def resize_cover(image: Any, width: int, height: int, resample: Any = None) -> Any:
    """Scale a PIL image (``resample``, default Lanczos; aspect kept) to cover ``width`` x ``height``, centred;
    the excess is cut."""
    from PIL import Image

    resample = Image.Resampling.LANCZOS if resample is None else resample
    ratio, src_ratio = width / height, image.width / image.height
    fit_w = width if ratio > src_ratio else image.width * height // image.height
    fit_h = height if ratio <= src_ratio else image.height * width // image.width
    out = Image.new("RGB", (width, height))
    out.paste(
        image.resize((fit_w, fit_h), resample=resample),
        (width // 2 - fit_w // 2, height // 2 - fit_h // 2),
    )
    return out


def crop_for_inpainting(image: Any, mask_image: Any, box: tuple[int, int, int, int], width: int, height: int):
    """``image`` and ``mask_image`` (PIL) cut to ``box`` and fitted to ``width`` x ``height`` (see
    :func:`resize_fill`); the mask comes back in mode "L"."""
    return resize_fill(image.crop(box), width, height), resize_fill(mask_image.crop(box), width, height).convert("L")


def paste_inpainted(
    original: Any, mask_image: Any, inpainted: Any, box: tuple[int, int, int, int] | None, resample: Any = None
) -> Any:
    """Put an inpainted crop (PIL, any size) back into ``box`` of ``original``: the crop is scaled to cover the
    box (``resample``, default Lanczos), then the original is laid over it where ``mask_image`` is black (blended
    where grey). With ``box`` None, ``inpainted`` already has the original's size. RGB result."""
    from PIL import Image, ImageOps

    keep = Image.new("RGBa", original.size)  # the original, transparent where the mask is white
    keep.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_image.convert("L")))
    if box is None:
        result = inpainted.convert("RGBA")
    else:
        x1, y1, x2, y2 = box
        canvas = Image.new("RGBA", original.size)
        canvas.paste(resize_cover(inpainted, x2 - x1, y2 - y1, resample), (x1, y1))
        result = canvas.convert("RGB").convert("RGBA")
    result.alpha_composite(keep.convert("RGBA"))
    return result.convert("RGB")
