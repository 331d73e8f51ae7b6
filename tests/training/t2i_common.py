"""Tiny text-to-image fixtures for the training tests: a tiny SD pipeline (built with torchdiffusion, saved as a
folder) and small captioned image folders in the layouts people use (seconds on a CPU)."""

from __future__ import annotations

import json
import os

import numpy as np

RESOLUTION = 64  # the tiny VAE's factor is 8: 8 x 8 latents, the tiny UNet's sample_size
CAPTIONS = ["a red cat", "the dog", "a photo", "the cat on a dog", "a blue photo", "the red dog"]


def save_tiny_pipeline(folder: str, seed: int = 0) -> str:
    """A tiny random SD 1.x-layout pipeline folder (torchdiffusion's classes, CLIP tokenizer written by the test)."""
    import torchdiffusion
    from tests.sd_fixtures import tiny_sd_components

    parts = tiny_sd_components(torchdiffusion, folder + "_tok", seed)
    pipe = torchdiffusion.StableDiffusionPipeline(**parts, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def _image(i: int, size: int = RESOLUTION):
    from PIL import Image

    rng = np.random.default_rng(i)
    base = rng.integers(0, 255, (3,), dtype=np.uint8)
    pixels = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_metadata_folder(folder: str, n: int = 6, column: str = "text") -> str:
    """``folder/NNN.png`` + ``metadata.jsonl`` with ``file_name`` and ``column``."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
        for i in range(n):
            _image(i).save(os.path.join(folder, f"{i:03d}.png"))
            f.write(json.dumps({"file_name": f"{i:03d}.png", column: CAPTIONS[i % len(CAPTIONS)]}) + "\n")
    return folder


def write_kohya_folder(folder: str, n: int = 6) -> str:
    """``folder/NNN.png`` + ``folder/NNN.txt`` (kohya's convention)."""
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        _image(i).save(os.path.join(folder, f"{i:03d}.png"))
        with open(os.path.join(folder, f"{i:03d}.txt"), "w", encoding="utf-8") as f:
            f.write(CAPTIONS[i % len(CAPTIONS)] + "\n")
    return folder


T2I_FAST = {
    "batch_size": 2,
    "max_steps": 3,
    "checkpointing_steps": 2,
    "sample_steps": 3,
    "sample_inference_steps": 2,
    "num_validation_images": 1,
    "validation_prompts": ("a red cat",),
    "log_steps": 1,
    "progress_bar": False,
    "lr_warmup_steps": 0,
    "learning_rate": 1e-3,
    "sample_guidance_scale": 2.0,
}
