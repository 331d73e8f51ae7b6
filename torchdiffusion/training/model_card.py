"""The model card (``README.md``) of a text-to-image fine-tune: the base model, how it was trained (full or LoRA
and its settings), the validation prompts and grid, and how to use the result (Hub metadata in a YAML header)."""

from __future__ import annotations

import os
from typing import Any

from ..utils.image_files import replace_into


def model_card(task: Any, step: int, config: Any, grid: str | None = None) -> str:
    """The card's Markdown for ``task`` (a :class:`~.text_to_image.TextToImageTask`) after ``step`` steps of
    ``config``; ``grid``: the validation grid's file name next to the card (None: no grid)."""
    lora = task.lora_rank is not None
    kind = f"LoRA (rank {task.lora_rank}, alpha {task.lora_alpha or task.lora_rank})" if lora else "full fine-tune"
    if lora and task.text_encoder_lora:
        kind += ", UNet and text encoder"
    settings = {
        "steps": step, "batch size per process": config.batch_size,
        "gradient accumulation steps": config.gradient_accumulation_steps, "learning rate": config.learning_rate,
        "lr schedule": config.lr_schedule, "mixed precision": config.mixed_precision,
        "prediction type": task.noise_scheduler.config.get("prediction_type"), "loss weighting": config.loss_weighting,
        "noise offset": config.noise_offset, "caption dropout": config.caption_dropout_prob,
        "EMA": bool(config.use_ema and not lora), "resolution": task.resolution, "seed": config.seed,
    }  # fmt: skip
    tags = ["stable-diffusion", "text-to-image", "torchdiffusion", "diffusers", *(["lora"] if lora else [])]
    lines = ["---", f"base_model: {task.base_name}", "library_name: diffusers", "tags:", *[f"- {t}" for t in tags],
             "---", "", f"# {'LoRA' if lora else 'Fine-tuned'} text-to-image weights for {task.base_name}", "",
             f"Trained with `torchdiffusion train`: {kind} of the UNet of `{task.base_name}`.", "",
             "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in settings.items()], ""]  # fmt: skip
    if config.validation_prompts:
        lines += ["Validation prompts (one row each in the grid):", "", *[f"- {p}" for p in config.validation_prompts]]
        lines += ["", f"![validation grid]({grid})" if grid else "(no validation grid was drawn)", ""]
    lines += ["## Use", "", "```python", "from torchdiffusion import StableDiffusionPipeline", ""]
    if lora:
        lines += [f"pipe = StableDiffusionPipeline.from_pretrained({task.base_name!r})",
                  'pipe.load_lora_weights("path/to/this/folder")',
                  'image = pipe("a prompt", cross_attention_kwargs={"scale": 0.8}).images[0]']  # fmt: skip
    else:
        lines += ['pipe = StableDiffusionPipeline.from_pretrained("path/to/this/folder")',
                  'image = pipe("a prompt").images[0]']  # fmt: skip
    lines += ["```", ""]
    return "\n".join(lines)


def write_model_card(folder: str, task: Any, step: int, config: Any) -> str:
    """Write ``folder/README.md`` (atomically); it shows ``samples.png`` when the folder holds one."""
    grid = "samples.png" if os.path.isfile(os.path.join(folder, "samples.png")) else None
    own = getattr(task, "model_card", None)  # a task may write its own card (e.g. LCM-LoRA distillation)
    text = own(step, config, grid) if own is not None else model_card(task, step, config, grid)
    path = os.path.join(folder, "README.md")

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    replace_into(path, write)
    return path
