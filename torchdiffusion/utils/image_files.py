"""Sample grids as PNG files: a batch of image tensors -> one PIL image, written atomically (a viewer never sees
half a file). Used by ``torchdiffusion generate`` and the Trainer's sample grids."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch


def replace_into(path: str, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then move the result onto ``path`` in one step."""
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


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


def save_image(image: Any, path: str) -> None:
    """Save a PIL image as PNG atomically."""
    replace_into(path, lambda tmp: image.save(tmp, format="PNG"))
