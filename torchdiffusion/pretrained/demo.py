"""``torchdiffusion demo``: the embedded text-to-image model at work, then taught a word it has never seen.

1. **Prompts**: one grid of the shipped model (:data:`~torchdiffusion.pretrained.EMBEDDED_MODEL`) for a handful of
   prompts of its grammar, with the time it took.
2. **A new word with LoRA**: :func:`write_new_colour_folder` writes a captioned-image folder (PNG files and a
   ``metadata.jsonl``, the layout users bring their own images in) of digits drawn in a colour outside the
   model's palette, captioned with a new word (``"pink"``). :func:`teach` trains LoRA adapters on it with the
   same text-to-image trainer users call (``train_text_to_image``), within a time budget.
3. **Before / after**: the same prompts and seeds with and without the adapters, in one image, and the share of
   images whose drawn digit is nearer the new colour than any palette colour (:func:`new_colour_share`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..training.captioned_digits import COLOR_NAMES, DIGIT_WORDS, PALETTE_RGB, draw_specs, render

NEW_WORD = "pink"
NEW_RGB: tuple[int, int, int] = (255, 105, 180)
"""The colour the demo teaches; the nearest palette colours (red, purple, white) are > 100 apart in RGB."""
PROMPTS: tuple[str, ...] = (
    "a red 7 on a blue background", "a white 3 on a black background", "a yellow five on a purple background",
    "a green 4", "a 0 on a orange background", "nine", "a blue 2 on a yellow background", "a black 8 on a white "
    "background",
)  # fmt: skip
"""The prompt grid's rows (two of them, green 4 and blue 2, are pairs held out of training)."""
NEW_PROMPTS: tuple[str, ...] = (
    "a pink 3 on a black background", "a pink 7 on a blue background", "a pink five on a green background",
    "a pink 1",
)  # fmt: skip


def write_new_colour_folder(
    folder: str | os.PathLike,
    word: str = NEW_WORD,
    rgb: tuple[int, int, int] = NEW_RGB,
    num_images: int = 600,
    seed: int = 0,
) -> str:
    """Write ``num_images`` 32 px PNGs of digits drawn in ``rgb`` on palette backgrounds, and ``metadata.jsonl``
    with their captions (``"a {word} {digit} on a {bg} background"`` or ``"a {word} {digit}"``, numerals or
    words), into ``folder`` (created). Returns the folder."""
    from PIL import Image

    from ..training.captioned_digits import _glyphs

    if not isinstance(word, str) or not word.isalpha() or word.lower() in COLOR_NAMES:
        raise ValueError(f"word must be a new alphabetic word (not one of {', '.join(COLOR_NAMES)}), got {word!r}")
    if len(rgb) != 3 or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in rgb):
        raise ValueError(f"rgb must be three ints in 0..255, got {rgb!r}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    glyph = rng.integers(0, len(_glyphs()[1]), num_images)
    bg = rng.integers(0, len(COLOR_NAMES), num_images)
    specs = draw_specs(rng, glyph, fg=(bg + 1) % len(COLOR_NAMES), bg=bg)  # fg index: a placeholder, recoloured
    jitter = rng.integers(-12, 13, (num_images, 3))
    specs["fg_rgb"] = np.clip(np.asarray(rgb) + jitter, 0, 255) / 255.0
    images = render(specs)
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    full = rng.random(num_images) < 0.7
    as_word = rng.random(num_images) < 0.5
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as meta:
        for i in range(num_images):
            name = f"{i:05d}.png"
            Image.fromarray(pixels[i]).save(os.path.join(folder, name))
            d = int(specs["digit"][i])
            digit = DIGIT_WORDS[d] if as_word[i] else str(d)
            text = f"a {word} {digit} on a {COLOR_NAMES[bg[i]]} background" if full[i] else f"a {word} {digit}"
            meta.write(json.dumps({"file_name": name, "text": text}) + "\n")
    return folder


def new_colour_share(images: torch.Tensor, rgb: tuple[int, int, int] = NEW_RGB) -> float:
    """Share of ``images`` ``(N, 3, H, W)`` in [0, 1] whose measured foreground colour is nearer ``rgb`` than any
    palette colour other than the measured background."""
    from ..training.text_yardstick import measure_colors

    bg, fg = measure_colors(images)
    palette = torch.cat([PALETTE_RGB, torch.tensor([rgb], dtype=torch.float32) / 255.0])
    bg_class = torch.cdist(bg, PALETTE_RGB).argmin(1)
    dist = torch.cdist(fg, palette)
    dist[torch.arange(len(fg)), bg_class] = float("inf")
    return float((dist.argmin(1) == len(PALETTE_RGB)).float().mean())


def draw(pipe: Any, prompts: Sequence[str], per_prompt: int, seed: int = 0, steps: int = 25,
         guidance_scale: float = 7.5) -> torch.Tensor:  # fmt: skip
    """``per_prompt`` images of each prompt (image ``j`` of every prompt seeded ``seed + j``), prompt by prompt:
    ``(len(prompts) * per_prompt, 3, H, W)`` in [0, 1]."""
    rows = [p for p in prompts for _ in range(per_prompt)]
    generators = [torch.Generator().manual_seed(seed + j) for _ in prompts for j in range(per_prompt)]
    return pipe(rows, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                output_type="pt").images  # fmt: skip


def teach(model: str, folder: str, output_dir: str, minutes: float = 1.5, rank: int = 8, max_steps: int = 1500,
          seed: int = 0) -> Any:  # fmt: skip
    """LoRA adapters (rank ``rank`` on the UNet's attention) for ``model`` (a folder or the embedded name) trained
    on ``folder`` for at most ``minutes`` / ``max_steps``; returns the
    :class:`~torchdiffusion.training.trainer.TrainingResult` (the adapters are
    ``output_dir/pytorch_lora_weights.safetensors``)."""
    from ..training.recipes import train_text_to_image

    return train_text_to_image(
        model, folder, lora_rank=rank, output_dir=output_dir, max_steps=max_steps, batch_size=32,
        learning_rate=2e-3, lr_schedule="cosine", lr_warmup_steps=20, time_limit_minutes=minutes, seed=seed,
        caption_dropout_prob=0.0, checkpointing_steps=10**9, checkpoints_total_limit=1, sample_steps=10**9,
        log_steps=50, progress_bar=False,
    )  # fmt: skip


def run_demo(output_dir: str = "outputs/demo", lora_minutes: float = 1.5, seed: int = 0, model: str | None = None,
             lora_max_steps: int = 1500, log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """The whole demo (see the module docstring) into ``output_dir`` with ``model`` (default: the embedded one);
    returns the figures it printed."""
    from ..pipelines.stable_diffusion.text_to_image import StableDiffusionPipeline
    from ..utils.image_files import image_grid, save_image
    from . import EMBEDDED_MODEL

    model = model or EMBEDDED_MODEL
    os.makedirs(output_dir, exist_ok=True)
    started = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    log(f"1/3 the model ({model}): {len(PROMPTS)} prompts x 6 images")
    t = time.perf_counter()
    images = draw(pipe, PROMPTS, 6, seed)
    figures: dict[str, Any] = {"grid_seconds": round(time.perf_counter() - t, 2), "grid_images": len(images)}
    grid = os.path.join(output_dir, "prompts.png")
    save_image(image_grid(images * 2 - 1, cols=6, scale=3), grid)
    with open(os.path.join(output_dir, "prompts.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(PROMPTS) + "\n")
    log(f"    {len(images)} images in {figures['grid_seconds']} s: {os.path.abspath(grid)} (rows: prompts.txt)")

    log(f"2/3 teaching it a new word, {NEW_WORD!r} = RGB {NEW_RGB}, with LoRA (about {lora_minutes:g} min)")
    before = draw(pipe, NEW_PROMPTS, 4, seed)
    data = write_new_colour_folder(os.path.join(output_dir, f"{NEW_WORD}-digits"), seed=seed)
    t = time.perf_counter()
    result = teach(model, data, os.path.join(output_dir, "lora"), lora_minutes, max_steps=lora_max_steps, seed=seed)
    figures["lora_seconds"], figures["lora_steps"] = round(time.perf_counter() - t, 1), result.step
    log(f"    {result.step} steps in {figures['lora_seconds']} s; adapters: {os.path.abspath(result.output_dir)}")

    log("3/3 before / after")
    pipe.load_lora_weights(result.output_dir)
    after = draw(pipe, NEW_PROMPTS, 4, seed)
    figures["new_colour_before"] = round(new_colour_share(before), 3)
    figures["new_colour_after"] = round(new_colour_share(after), 3)
    pairs = torch.cat([torch.cat([b, a]) for b, a in zip(before.split(4), after.split(4))])
    compare = os.path.join(output_dir, "before_after.png")
    save_image(image_grid(pairs * 2 - 1, cols=8, scale=3), compare)
    log(f"    rows: {'; '.join(NEW_PROMPTS)}; left 4 before, right 4 after: {os.path.abspath(compare)}")
    log(f"    digits drawn in {NEW_WORD}: {figures['new_colour_before']:.0%} before, "
        f"{figures['new_colour_after']:.0%} after")  # fmt: skip
    figures["total_seconds"] = round(time.perf_counter() - started, 1)
    log(f"\ndone in {figures['total_seconds'] / 60:.1f} min. Next:")
    log('  torchdiffusion generate "a red 7 on a blue background" --num-images 8 --out sevens.png')
    log('  torchdiffusion generate "a green 4 on a white background" --fast --num-images 16 --out fast.png   # 4 steps')
    log(f"  torchdiffusion generate \"{NEW_PROMPTS[0]}\" --lora {result.output_dir} --num-images 8 --out pink.png")
    log("  torchdiffusion train --dataset digits --class-conditional --output-dir runs/digits   # pixel-space model")
    return figures
