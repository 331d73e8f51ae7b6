"""Tiny random Stable Diffusion parts in the real SD layout, shared by the SD tests.

Everything is built in code: a CLIP byte-level BPE vocabulary written by the test (no downloads), a
transformers ``CLIPTextModel``, and a 4-level ``UNet2DConditionModel`` / ``AutoencoderKL`` built either with
the real ``diffusers`` (the parity oracle) or with ``torchdiffusion`` (same constructor arguments).

``save_tiny_sd(folder)`` writes a pipeline folder with Diffusers' own ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
from types import ModuleType
from typing import Any

import torch

MODEL_MAX_LENGTH = 77
CROSS_DIM = 32

# The layout of SD 1.x (4 UNet levels, the last without attention; a 4-level VAE: scale factor 8), narrowed.
UNET_KWARGS: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(8, 16, 16, 16),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=CROSS_DIM,
    attention_head_dim=2,
    norm_num_groups=4,
)
VAE_KWARGS: dict[str, Any] = dict(
    sample_size=64,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    block_out_channels=(8, 8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=4,
)
SCHEDULER_KWARGS: dict[str, Any] = dict(  # SD's PNDM scheduler config
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
)


def _byte_chars() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE uses for the bytes 0..255 (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    table = {b: b for b in printable}
    for b in range(256):
        if b not in table:
            table[b] = next(extra)
    return [chr(table[b]) for b in range(256)]


MERGES = ["t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>", "a n", "p h", "o t", "ph ot", "phot o</w>"]


def write_clip_tokenizer(folder: str | os.PathLike, model_max_length: int = MODEL_MAX_LENGTH, pad_token: str | None = None):
    """Write vocab.json + merges.txt + tokenizer_config.json of a tiny CLIP tokenizer; return the vocab size."""
    os.makedirs(folder, exist_ok=True)
    chars = _byte_chars()
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in MERGES]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    config = {"model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer"}
    if pad_token is not None:
        config["pad_token"] = pad_token
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return len(vocab)


def tiny_tokenizer(folder: str | os.PathLike, **kwargs: Any):
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder, **kwargs)
    return CLIPTokenizer.from_pretrained(os.fspath(folder))


def tiny_text_encoder(tokenizer, seed: int = 0, with_projection: bool = False, **overrides: Any):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = dict(
        vocab_size=len(tokenizer), hidden_size=CROSS_DIM, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=3, max_position_embeddings=MODEL_MAX_LENGTH, projection_dim=CROSS_DIM,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_act="quick_gelu",
    )
    config.update(overrides)
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(**config)).eval()


def tiny_unet(lib: ModuleType, seed: int = 0, **overrides: Any):
    torch.manual_seed(seed)
    return lib.UNet2DConditionModel(**{**UNET_KWARGS, **overrides}).eval()


def tiny_vae(lib: ModuleType, seed: int = 0, **overrides: Any):
    torch.manual_seed(seed)
    return lib.AutoencoderKL(**{**VAE_KWARGS, **overrides}).eval()


def tiny_sd_components(lib: ModuleType, tokenizer_dir: str | os.PathLike, seed: int = 0, unet_in_channels: int = 4):
    """The components of a tiny SD pipeline built with ``lib`` (``diffusers`` or ``torchdiffusion``)."""
    tokenizer = tiny_tokenizer(tokenizer_dir)
    return dict(
        vae=tiny_vae(lib, seed + 1),
        text_encoder=tiny_text_encoder(tokenizer, seed + 2),
        tokenizer=tokenizer,
        unet=tiny_unet(lib, seed + 3, in_channels=unet_in_channels),
        scheduler=lib.PNDMScheduler(**SCHEDULER_KWARGS),
        safety_checker=None,
        feature_extractor=None,
    )


def save_tiny_sd(folder: str | os.PathLike, seed: int = 0, inpaint: bool = False) -> str:
    """Build a tiny SD (or 9-channel inpainting) pipeline with the real diffusers and ``save_pretrained`` it."""
    import diffusers

    parts = tiny_sd_components(diffusers, os.path.join(os.fspath(folder) + "_tok"), seed, 9 if inpaint else 4)
    cls = diffusers.StableDiffusionInpaintPipeline if inpaint else diffusers.StableDiffusionPipeline
    pipe = cls(**parts, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return os.fspath(folder)
