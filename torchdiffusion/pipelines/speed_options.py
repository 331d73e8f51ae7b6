"""The per-call speed options the pipelines share: UNet feature caching (``cache_interval`` / ``cache_depth``) and
classifier-free guidance that stops early (``guidance_end``).

Both are options of one call, never state of the pipeline or the model, so calls with different settings can run
in several threads on one pipeline object. They combine freely (and with step callbacks such as
:class:`~torchdiffusion.callbacks.SDCFGCutoffCallback`), so a preset can turn on several at once.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.feature_cache import UNetFeatureCache, check_cache_arguments
from .denoise import check_finite_number

__all__ = [
    "FAST_PRESET",
    "check_speed_options",
    "conditional_rows",
    "feature_cache_for",
    "last_guided_step",
    "unet_cache_kwargs",
]


FAST_PRESET: dict[str, Any] = {"num_inference_steps": 25, "cache_interval": 3, "cache_depth": 1, "guidance_end": 0.5}
"""The fast preset (``torchdiffusion generate --fast`` on models without a shipped LCM-LoRA; in Python
``pipe(prompt, **FAST_PRESET)``): the fastest
combination of the speed options whose images kept the quality of full compute (25 DPM-Solver++ steps) on the
embedded model's yardstick: every accuracy within 2 points, Fréchet distance within 10 %
(``benchmarks/fast_quality.py`` measures it; ``benchmarks/fast_sampling.py`` times it at Stable Diffusion 1.5's
size). Fewer steps (12 or 20 with the same options) lost 3 points on the held-out prompts; a distilled LCM-LoRA
(``torchdiffusion distill-lcm``, ``docs/lcm_lora.md``) goes further: 4 steps without guidance."""


def check_speed_options(
    cache_interval: Any, cache_depth: Any, guidance_end: Any = 1.0, unet: torch.nn.Module | None = None
) -> None:
    """``ValueError``/``TypeError`` naming the argument when ``cache_interval`` (None or an int >= 1),
    ``cache_depth`` (an int in [1, the UNet's down blocks]) or ``guidance_end`` (a number in (0, 1]) is bad."""
    check_cache_arguments(cache_interval, cache_depth, unet)
    value = check_finite_number(guidance_end, "guidance_end")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"guidance_end must be in (0, 1] (the fraction of steps with guidance), got {guidance_end}")


def feature_cache_for(cache_interval: int | None, cache_depth: int) -> UNetFeatureCache | None:
    """A fresh feature cache for one call, or None when ``cache_interval`` is None (caching off)."""
    return None if cache_interval is None else UNetFeatureCache(cache_interval, cache_depth)


def unet_cache_kwargs(cache: UNetFeatureCache | None) -> dict[str, Any]:
    """The UNet keyword arguments for ``cache``: none when caching is off (any UNet then works)."""
    return {} if cache is None else {"feature_cache": cache}


def last_guided_step(num_steps: int, guidance_end: float) -> int:
    """The index of the last step that runs classifier-free guidance: ``int(num_steps * guidance_end)``, the step
    at which Diffusers' ``SDCFGCutoffCallback(cutoff_step_ratio=guidance_end)`` switches guidance off after it
    ran (``guidance_end=1``: every step is guided)."""
    return int(num_steps * guidance_end)


def conditional_rows(tensor: torch.Tensor, rows: int, guided: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor`` for a step without guidance on ``rows`` samples: the conditional (second) half of a doubled
    ``[unconditional, conditional]`` batch, or ``tensor`` itself when it already has ``rows`` rows.

    ``guided``: the conditional rows of the last guided step. Diffusers' cut-off callback keeps only the last row
    (``prompt_embeds[-1:]``), which is the whole conditional half for one image; for more images it is their last
    row, so those rows are taken back from ``guided``."""
    n = tensor.shape[0]
    if n == 2 * rows:
        return tensor[rows:]
    if n < rows and guided is not None and guided.shape[0] == rows and torch.equal(tensor, guided[rows - n :]):
        return guided
    return tensor
