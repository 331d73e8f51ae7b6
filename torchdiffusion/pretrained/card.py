"""The model card (``README.md``) of the embedded model: what it is, the recipe and the command that made it,
the training time, the measurements of each stage and the yardstick's figures against the targets."""

from __future__ import annotations

import math
import os
from typing import Any

TARGETS = {("in_distribution", "digit_accuracy"): 0.95, ("in_distribution", "fg_accuracy"): 0.95,
           ("in_distribution", "bg_accuracy"): 0.95, ("held_out", "held_out_accuracy"): 0.80}  # fmt: skip
"""The issue's targets for the yardstick's figures."""


def _pct(value: Any) -> str:
    return "n/a" if not isinstance(value, float) or math.isnan(value) else f"{100 * value:.1f} %"


def card_text(summary: dict[str, Any]) -> str:
    """The card's Markdown for a recipe ``summary`` (what :func:`~.recipe.pretrain_embedded` returns)."""
    ev, vae, te, unet = summary["evaluation"], summary["vae"], summary["text_encoder"], summary["unet"]
    params, sizes = summary["parameters"], summary["sizes"]
    rows = []
    for (split, metric), target in TARGETS.items():
        value = ev[split][metric]
        met = isinstance(value, float) and value >= target
        rows.append(f"| {split} | {metric} | {_pct(value)} | {_pct(target)} | {'yes' if met else '**no**'} |")
    missed = [r for r in rows if r.endswith("**no** |")]
    lines = [
        "---", "library_name: diffusers", "license: apache-2.0", "pipeline_tag: text-to-image",
        "tags:", "- text-to-image", "- stable-diffusion", "- torchdiffusion", "---", "",
        "# torchdiffusion/captioned-digits", "",
        "A tiny text-to-image model in the Stable Diffusion layout, shipped inside the `torchdiffusion` package",
        "and trained from scratch in this repository on the `captioned-digits` data set (scikit-learn's 8 x 8",
        "handwritten digits drawn in a colour on a coloured background, 32 x 32 RGB). Prompts follow the grammar",
        "`a {fg} {digit} on a {bg} background` | `a {fg} {digit}` | `a {digit} on a {bg} background` | `{digit}`",
        "(digit as numeral or word; colours: black, white, red, green, blue, yellow, purple, orange).",
        "The (digit, foreground) pairs (4, green), (7, red), (2, blue), (9, yellow) were held out of training.", "",
        "```python", "from torchdiffusion import StableDiffusionPipeline", "",
        'pipe = StableDiffusionPipeline.from_pretrained("torchdiffusion/captioned-digits")  # offline, from the '
        "package", 'image = pipe("a red 7 on a blue background", num_inference_steps=25).images[0]', "```", "",
        "or `torchdiffusion generate \"a red 7 on a blue background\" --num-images 8 --out sevens.png`.", "",
        "## Figures", "",
        f"The project's yardstick (`TextToImageYardstick`), {ev['in_distribution']['num_images']} prompts per set, "
        f"{ev['steps']} steps of {ev['scheduler']}, guidance scale {ev['guidance_scale']}, seed {summary['seed']}:",
        "", "| prompts | figure | value | target | met |", "|---|---|---|---|---|", *rows, "",
        f"Also: in-distribution prompts fully right {_pct(ev['in_distribution']['prompt_accuracy'])}; held-out "
        f"digit {_pct(ev['held_out']['digit_accuracy'])}, foreground {_pct(ev['held_out']['fg_accuracy'])}; "
        f"Fréchet distance (yardstick features, N = {ev['in_distribution']['num_images']}) "
        f"{ev['in_distribution']['frechet_distance']:.1f} in-distribution, {ev['held_out']['frechet_distance']:.1f} "
        f"held-out. The yardstick's digit reader scores {_pct(ev['yardstick_digit_test_accuracy'])} on real images.",
        "",
    ]  # fmt: skip
    if missed:
        lines += [f"**Below target** on {len(missed)} figure(s) above: this run is what fitted the time budget; "
                  "a longer run of the same command (`--minutes`) is the first thing to try.", ""]  # fmt: skip
    lines += [
        f"Time to generate (measured at the end of the recipe, {ev['torch_threads']} torch threads, the machine "
        f"possibly shared): one image {ev['seconds_batch_1']:.2f} s, a batch of 16 {ev['seconds_batch_16']:.2f} s.",
        "", "## Recipe", "", "```", summary["command"], "```", "",
        f"Total training time {summary['training_seconds'] / 60:.1f} min ({summary['total_seconds'] / 60:.1f} min "
        f"with the evaluation); budget: {summary['time_budget_minutes']} min. Seed {summary['seed']}; "
        f"{sizes['num_images']} training images.", "",
        f"1. **VAE** (`AutoencoderKL`, widths {tuple(sizes['vae_channels'])}, 32 px -> 4 x 8 x 8, no mid-block "
        f"attention; {params['vae']:,} parameters): L1 + squared error + 5e-4 KL, AdamW with warm-up and cosine "
        f"decay, {vae['steps']} steps of 64 images in {vae['seconds']} s. Reconstruction of 512 unseen "
        f"held-out-split images: PSNR {vae['psnr_db']} dB, mean absolute error {vae['mae_8bit']} / 255. "
        f"`scaling_factor` {vae['scaling_factor']} (unit-variance latents).",
        f"2. **Text encoder** (`transformers.CLIPTextModel`, {sizes['text_layers']} layers, width "
        f"{sizes['text_hidden']}; {params['text_encoder']:,} parameters) with the package's digits tokenizer: "
        f"contrastive against a small image CNN (CLIP loss in which every image of the batch that fits the caption "
        f"is a positive), {te['steps']} steps of 128 pairs in {te['seconds']} s. Text-to-image retrieval among 512 "
        f"unseen images: {_pct(te['retrieval_in_distribution'])} of in-distribution captions and "
        f"{_pct(te['retrieval_held_out'])} of captions naming a held-out pair find a fitting image.",
        f"3. **UNet** (`UNet2DConditionModel`, widths {tuple(sizes['unet_channels'])}, cross-attention at every "
        f"level; {params['unet']:,} parameters) trained with torchdiffusion's text-to-image trainer (frozen VAE "
        f"and text encoder, cached latents, caption dropout 0.1, Stable Diffusion's scaled-linear noise schedule, "
        f"epsilon prediction, EMA "
        f"0.999): {unet['steps']} steps of {sizes['unet_batch_size']} in {unet['seconds']} s, final loss "
        f"{unet['final_loss']}.", "",
        f"Weights: {summary['safetensors_bytes'] / 2**20:.1f} MiB of safetensors (float32). Scheduler: "
        "DPM-Solver++ (2M) over the same schedule.", "",
        "## Data and license", "",
        "The glyphs are scikit-learn's `load_digits` (the UCI optical recognition of handwritten digits data set, "
        "CC BY 4.0). Code and weights: Apache-2.0.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def write_card(folder: str, summary: dict[str, Any]) -> str:
    """Write ``folder/README.md`` for a recipe ``summary``; returns its path."""
    path = os.path.join(folder, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(card_text(summary))
    return path
