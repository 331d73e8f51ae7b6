"""What a training run shows a person: sample grids, a loss-curve PNG (drawn with PIL, no matplotlib) and a
small JSON log, all written atomically so a viewer never sees half a file."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch


def _replace_into(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def save_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, default=str)

    _replace_into(path, write)


def image_grid(images: torch.Tensor, cols: int | None = None, scale: int = 1, pad: int = 2):
    """``(N, C, H, W)`` tensor in [-1, 1] -> one PIL image, ``cols`` per row (default ~square), upscaled by ``scale``
    with nearest-neighbour (small images stay crisp), ``pad`` pixels of dark gap."""
    from PIL import Image

    images = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 24, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    array = grid.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0], mode="L") if c == 1 else Image.fromarray(array)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), resample=Image.Resampling.NEAREST)
    return image


def save_image(image, path: str) -> None:
    """Save a PIL image as PNG atomically."""
    _replace_into(path, lambda tmp: image.save(tmp, format="PNG"))


def smooth(values: Sequence[float], weight: float | None = None) -> list[float]:
    """Exponential moving average of ``values`` (bias-corrected), the trend line of a noisy loss curve."""
    if weight is None:
        weight = min(0.98, max(0.0, 1 - 10 / max(1, len(values))))
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** (i + 1)))
    return out


def loss_plot(losses: Sequence[float], title: str = "training loss", size: tuple[int, int] = (720, 400)):
    """A PIL line chart of ``losses`` per step (log-scaled y): raw values in light blue, the smoothed trend dark."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 64, width - 16, 32, height - 40
    draw.text((left, 10), title, fill="black")
    draw.rectangle((left, top, right, bottom), outline="black")
    values = [v for v in losses if math.isfinite(v) and v > 0]
    if len(values) < 2:
        draw.text((left + 10, top + 10), "not enough steps yet", fill="gray")
        return image
    lo, hi = math.log10(min(values)), math.log10(max(values))
    hi = hi if hi > lo else lo + 1

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * i / (len(values) - 1)
        y = bottom - (bottom - top) * (math.log10(v) - lo) / (hi - lo)
        return x, y

    for k in range(math.floor(lo), math.ceil(hi) + 1):  # decade grid lines and labels
        for m in (1, 2, 5):
            v = m * 10.0**k
            if lo <= math.log10(v) <= hi:
                y = xy(0, v)[1]
                draw.line((left, y, right, y), fill=(230, 230, 230))
                draw.text((6, y - 6), f"{v:g}", fill="black")
    for v in (min(values), max(values)):  # the range itself, for curves that span less than one decade mark
        y = xy(0, v)[1]
        draw.text((6, y - 6), f"{v:.3g}", fill=(90, 90, 90))
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + (right - left) * frac
        draw.text((x - 10, bottom + 8), str(round(frac * (len(values) - 1)) + 1), fill="black")
    draw.text(((left + right) // 2 - 12, height - 18), "step", fill="black")
    draw.line([xy(i, v) for i, v in enumerate(values)], fill=(160, 190, 235), width=1)
    trend = smooth(values)
    draw.line([xy(i, v) for i, v in enumerate(trend)], fill=(20, 60, 160), width=2)
    draw.text((right - 150, top + 6), f"last (smoothed): {trend[-1]:.4f}", fill=(20, 60, 160))
    return image
