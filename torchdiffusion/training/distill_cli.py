"""The ``torchdiffusion distill-lcm`` subcommand: its arguments and its run (latent consistency distillation into a
LoRA, :func:`~torchdiffusion.training.recipes.distill_lcm_lora`)."""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_distill_lcm_parser(sub: Any) -> None:
    p = sub.add_parser("distill-lcm", help="distil a Stable Diffusion model into an LCM-LoRA (samples in 2-8 steps)",
                       description=DISTILL_LCM_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--pretrained", default=None, help="the teacher: a Stable Diffusion folder or Hub id "
                   "(default: the embedded model)")  # fmt: skip
    p.add_argument("--dataset", default=None, help="captioned images (a folder, 'captioned-digits', a Hub data set; "
                   "default 'captioned-digits' for the embedded model)")  # fmt: skip
    p.add_argument("--output-dir", required=True)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=None, help="default: the rank")
    p.add_argument("--lora-targets", choices=("attention", "all"), default="attention",
                   help="attention projections only, or also convolutions, feed-forward and projections")  # fmt: skip
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (at most, with --minutes)")
    p.add_argument("--minutes", type=float, default=None, help="time budget: fewer steps to finish in about this")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant")
    p.add_argument("--lr-warmup-steps", type=int, default=0)
    p.add_argument("--w-min", type=float, default=3.0, help="smallest guidance scale of the teacher")
    p.add_argument("--w-max", type=float, default=12.0, help="largest guidance scale of the teacher")
    p.add_argument("--num-ddim-timesteps", type=int, default=50, help="points of the teacher's DDIM solver grid")
    p.add_argument("--huber-c", type=float, default=1e-3, help="constant of the pseudo-Huber loss")
    p.add_argument("--resolution", type=int, default=None, help="default: the UNet's sample size x the VAE factor")
    p.add_argument("--caption-column", default=None)
    p.add_argument("--image-column", default=None)
    p.add_argument("--no-cache-latents", action="store_true", help="encode images and captions every step")
    p.add_argument("--validation-prompt", action="append", default=[], help="a prompt of the 4-step validation grid "
                   "(repeat for more)")  # fmt: skip
    p.add_argument("--num-validation-images", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=500, help="draw the validation grid every N steps")
    p.add_argument("--checkpointing-steps", type=int, default=500)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


DISTILL_LCM_HELP = """Latent consistency distillation into a LoRA (LCM-LoRA): the teacher's guided DDIM steps are
distilled into adapters on its UNet; with them and LCMScheduler the model samples in 2-8 steps at guidance 1.

  torchdiffusion distill-lcm --output-dir runs/lcm --minutes 10          # the embedded model
  torchdiffusion generate "a red 7 on a blue background" --lora runs/lcm --scheduler lcm --steps 4 \
      --guidance-scale 1 --out sevens.png
"""


def run_distill_lcm(args: argparse.Namespace) -> int:
    from ..pretrained import EMBEDDED_MODEL
    from .recipes import distill_lcm_lora

    pretrained = args.pretrained or EMBEDDED_MODEL
    dataset = args.dataset
    if dataset is None:
        if pretrained != EMBEDDED_MODEL:
            raise ValueError("--dataset: give the captioned images to distil on (a folder with metadata.jsonl or "
                             "name.txt captions, or a Hub data set)")  # fmt: skip
        dataset = "captioned-digits"
    result = distill_lcm_lora(
        pretrained, dataset, args.output_dir, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        max_steps=args.steps, time_limit_minutes=args.minutes, w_min=args.w_min, w_max=args.w_max,
        num_ddim_timesteps=args.num_ddim_timesteps, huber_c=args.huber_c, lora_targets=args.lora_targets,
        caption_column=args.caption_column, image_column=args.image_column, resolution=args.resolution,
        cache_latents=False if args.no_cache_latents else None, batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_schedule=args.lr_schedule, lr_warmup_steps=args.lr_warmup_steps,
        validation_prompts=tuple(args.validation_prompt), num_validation_images=args.num_validation_images,
        sample_steps=args.sample_steps, checkpointing_steps=args.checkpointing_steps,
        resume_from_checkpoint=args.resume, mixed_precision=args.mixed_precision, seed=args.seed,
        progress_bar=not args.no_progress,
    )  # fmt: skip
    print(f"LCM-LoRA weights: {os.path.abspath(result.pipeline_path)} ({result.step} steps); sample with "
          "LCMScheduler, 4 steps, guidance_scale 1 (see README.md there)")  # fmt: skip
    return 0
