"""Reuse of a UNet's deep features between denoising steps (the DeepCache idea, Ma et al. 2023).

Adjacent steps of a sampler feed the UNet almost the same input, and the deep, low-resolution part of the
network (the deeper down blocks, the mid block and the first up blocks) changes slowly between them. A
:class:`UNetFeatureCache` lets ``UNet2DModel`` / ``UNet2DConditionModel`` run the whole network on every
``interval``-th call (a *full* call, which records the features entering the up block at the matching depth) and,
on the calls in between, only the shallow branch: ``conv_in``, the first ``depth`` down blocks, the last
``depth`` up blocks (fed the recorded deep features and the fresh shallow skips) and ``conv_out``.

The cache belongs to one sampling call: create one per call and pass it to every UNet call of that run
(``unet(..., feature_cache=cache)``); it is never stored on the model, so concurrent calls stay independent.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..pipelines.denoise import check_positive_int

__all__ = ["UNetFeatureCache", "check_cache_arguments"]


def check_cache_arguments(cache_interval: Any, cache_depth: Any, unet: nn.Module | None = None) -> None:
    """``ValueError``/``TypeError`` naming ``cache_interval`` or ``cache_depth`` when they are not valid for
    ``unet``: ``cache_interval`` None (off) or an int >= 1, ``cache_depth`` an int in [1, number of down blocks]."""
    if cache_interval is not None:
        check_positive_int(cache_interval, "cache_interval")
    check_positive_int(cache_depth, "cache_depth")
    levels = len(unet.down_blocks) if unet is not None and hasattr(unet, "down_blocks") else None
    if levels is not None and cache_depth > levels:
        raise ValueError(f"cache_depth must be <= the UNet's {levels} down blocks, got {cache_depth}")


class UNetFeatureCache:
    """The deep features of the last full UNet call of one sampling run, and when to compute them afresh.

    ``interval``: calls 0, interval, 2 * interval, ... run the full network (``interval=1``: every call, exactly
    the uncached computation). ``depth``: how many levels (down block + matching up block) stay live, in
    [1, number of down blocks]. A call also runs in full when its input's shape differs from the recorded one
    (e.g. the batch changed); :meth:`keep_last_rows` keeps the conditional half of a guided batch when
    classifier-free guidance stops.
    """

    def __init__(self, interval: int, depth: int = 1) -> None:
        check_cache_arguments(interval, depth)
        self.interval = interval
        self.depth = depth
        self.calls = 0
        self.full_calls = 0
        self._features: tuple[torch.Tensor | None, ...] | None = None
        self._key: tuple[int, ...] | None = None

    def lookup(self, unet: nn.Module, sample: torch.Tensor) -> tuple[torch.Tensor | None, ...] | None:
        """Begin one UNet call on ``sample`` (B, C, H, W): the recorded deep features to reuse (copies: the up
        blocks may work in place), or None when this call must run in full (and will :meth:`store`)."""
        check_cache_arguments(self.interval, self.depth, unet)
        index, self.calls = self.calls, self.calls + 1
        reuse = self._features is not None and index % self.interval != 0 and self._key == tuple(sample.shape)
        if not reuse:
            self.full_calls += 1
            self._features, self._key = None, tuple(sample.shape)
            return None
        return tuple(None if f is None else f.clone() for f in self._features)

    def store(self, *features: torch.Tensor | None) -> None:
        """Record the deep features of the current full call (the inputs of the first live up block)."""
        self._features = tuple(None if f is None else f.clone() for f in features)

    def keep_last_rows(self, rows: int) -> None:
        """Keep only the last ``rows`` samples of the recorded batch (the conditional half of a [uncond, cond]
        batch once guidance stops), so the next calls on ``rows`` samples can still reuse them."""
        if self._features is None or self._key is None or self._key[0] <= rows:
            return
        self._features = tuple(None if f is None else f[-rows:] for f in self._features)
        self._key = (rows, *self._key[1:])

    def skips_needed(self, unet: nn.Module) -> int:
        """How many skip tensors the live up blocks consume (the first ones the down path produces)."""
        return sum(len(block.resnets) for block in unet.up_blocks[len(unet.up_blocks) - self.depth :])
