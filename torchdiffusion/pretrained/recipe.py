"""The recipe of the embedded text-to-image model: one call (or command) trains it from scratch, in order,

1. the **VAE** (32 px RGB -> ``4 x 8 x 8`` latents; :func:`~.stages.train_vae`),
2. the **text encoder** (a tiny CLIP text model, contrastively against images; :func:`~.stages.train_text_encoder`),
3. the **UNet** (``UNet2DConditionModel`` with cross-attention) with the text-to-image task of the shared
   :class:`~torchdiffusion.training.trainer.Trainer` on the VAE's latents and the text encoder's embeddings,

then writes the Stable Diffusion pipeline folder (with the DPM-Solver++ scheduler and the tokenizer of
:mod:`.tokenizer`), scores it with :class:`~torchdiffusion.training.text_yardstick.TextToImageYardstick` and
writes the model card ``README.md`` with the figures::

    torchdiffusion pretrain-embedded --output-dir runs/captioned-digits --minutes 60
    python -m torchdiffusion.pretrained.recipe --output-dir runs/captioned-digits --minutes 60

``tiny=True`` (``--tiny``) runs every stage for a few steps on tiny models (seconds; what the tests run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..training.captioned_digits import CaptionedDigitsDataset
from . import stages
from .card import write_card
from .tokenizer import write_digits_tokenizer


@dataclass(frozen=True)
class Sizes:
    """Model sizes and step counts of a recipe run (the step counts are ceilings: the time budget may cut them)."""

    num_images: int = 20_000
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_steps: int = 4000
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_steps: int = 2000
    unet_channels: tuple[int, ...] = (64, 96)
    unet_heads: int = 4
    unet_groups: int = 32
    unet_steps: int = 20_000
    unet_batch_size: int = 64
    unet_learning_rate: float = 8e-4
    yardstick_prompts: int = 64
    yardstick_epochs: int = 6
    yardstick_images_per_epoch: int = 6000


FULL = Sizes()
TINY = Sizes(num_images=64, vae_channels=(8, 16, 16), vae_steps=3, text_hidden=32, text_layers=1, text_heads=2,
             text_steps=3, unet_channels=(16, 32), unet_heads=2, unet_groups=8, unet_steps=3, unet_batch_size=8,
             yardstick_prompts=2, yardstick_epochs=1, yardstick_images_per_epoch=64)  # fmt: skip
SHARES = {"vae": 0.15, "text_encoder": 0.10}
"""Shares of the time budget for the first two stages; the UNet gets what is left minus the evaluation's reserve."""
EVAL_RESERVE_MINUTES = 2.0

DEFAULT_STEPS = 25
"""Inference steps of the figures (``torchdiffusion generate``'s default)."""
DEFAULT_GUIDANCE = 7.5
NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "beta_end": 0.012}  # fmt: skip
"""Stable Diffusion's training schedule. (The cosine schedule was tried first: its last step has
``alpha_bar`` = 2.4e-9, and DPM-Solver++ from there turned small epsilon errors into noise: 8 % digit accuracy.)"""


def build_unet(sizes: Sizes, cross_attention_dim: int, seed: int = 0):
    """A fresh :class:`~torchdiffusion.UNet2DConditionModel` for ``4 x 8 x 8`` latents: one level per width of
    ``sizes.unet_channels``, cross-attention on every level and in the middle."""
    from ..models.unet_2d_condition import UNet2DConditionModel

    n = len(sizes.unet_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=tuple(sizes.unet_channels), down_block_types=("CrossAttnDownBlock2D",) * n,
            up_block_types=("CrossAttnUpBlock2D",) * n, cross_attention_dim=cross_attention_dim,
            attention_head_dim=sizes.unet_heads, norm_num_groups=sizes.unet_groups,
        )  # fmt: skip


class StepBudget:
    """While open, a thread refits ``trainer.config.max_steps`` every ``every`` seconds so that the run ends by
    ``deadline`` (a ``time.time()`` value; None: nothing to do), from the speed of the last ``window`` seconds
    of steps: on shared CPUs the speed changes during a run, and one early measurement (the Trainer's own
    ``time_limit_minutes``) can be far off. Never above the configured ceiling, never below the next step."""

    def __init__(self, trainer: Any, deadline: float | None, every: float = 15.0, window: float = 180.0) -> None:
        self.trainer, self.deadline, self.every, self.window = trainer, deadline, every, window
        self.ceiling = trainer.config.max_steps
        self.marks: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refit(self, now: float, step: int) -> int:
        """Record ``(now, step)`` and set (and return) the new ``max_steps``."""
        cfg = self.trainer.config
        if step > 0:
            self.marks.append((now, step))
        self.marks = [m for m in self.marks if m[0] >= now - self.window] or self.marks[-1:]
        if len(self.marks) >= 2 and self.marks[-1][1] > self.marks[0][1]:
            (t0, s0), (t1, s1) = self.marks[0], self.marks[-1]
            fit = step + int(max(0.0, self.deadline - now) * (s1 - s0) / (t1 - t0))
            cfg.max_steps = max(step + 1, min(self.ceiling, fit))
        elif now > self.deadline:
            cfg.max_steps = max(step + 1, 1)
        return cfg.max_steps

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.refit(time.time(), int(getattr(self.trainer, "step", 0)))

    def __enter__(self) -> StepBudget:
        if self.deadline is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="step-budget")
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def sampling_scheduler():
    """The shipped scheduler: DPM-Solver++ (2M) over the training noise schedule (:data:`NOISE_SCHEDULE`)."""
    from ..schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**NOISE_SCHEDULE, steps_offset=1)


def _check_minutes(minutes: Any) -> float | None:
    if minutes is None:
        return None
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0:
        raise ValueError(f"minutes must be a positive number or None, got {minutes!r}")
    return float(minutes)


def pretrain_embedded(
    output_dir: str | os.PathLike,
    minutes: float | None = 60.0,
    tiny: bool = False,
    seed: int = 0,
    work_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train the embedded model from scratch into ``output_dir`` (a Stable Diffusion pipeline folder with its
    model card) within about ``minutes`` (None: the step ceilings of the sizes); ``tiny``: tiny models and a
    few steps per stage. ``work_dir`` holds the UNet stage's checkpoints and logs (default: a temporary folder,
    removed afterwards). Returns the summary that the card records (also written as ``recipe.json`` in
    ``work_dir``): per-stage steps and seconds, the measurements and the yardstick's figures."""
    from transformers import CLIPTokenizer

    from ..pipelines.stable_diffusion.text_to_image import StableDiffusionPipeline
    from ..training.config import TrainingConfig
    from ..training.text_to_image import TextToImageTask
    from ..training.trainer import Trainer

    minutes = _check_minutes(minutes)
    if not isinstance(output_dir, (str, os.PathLike)) or not os.fspath(output_dir):
        raise ValueError(f"output_dir must be a folder path, got {output_dir!r}")
    sizes = TINY if tiny else FULL
    say = log or (lambda _: None)
    started = time.time()
    temporary = work_dir is None
    work = tempfile.mkdtemp(prefix="embedded-recipe-") if temporary else os.fspath(work_dir)
    os.makedirs(work, exist_ok=True)
    summary: dict[str, Any] = {"command": command_line(output_dir, minutes, tiny, seed), "seed": seed,
                               "sizes": asdict(sizes), "time_budget_minutes": minutes}  # fmt: skip

    def budget(share: float) -> float | None:
        return None if minutes is None else minutes * share

    try:
        write_digits_tokenizer(os.path.join(work, "tokenizer"))
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(work, "tokenizer"))
        data = CaptionedDigitsDataset("train", sizes.num_images, seed=seed)

        say(f"[1/3] VAE {sizes.vae_channels} on {len(data)} images")
        vae = stages.build_vae(sizes.vae_channels, seed=seed)
        run = stages.train_vae(vae, data, sizes.vae_steps, minutes=budget(SHARES["vae"]), seed=seed, log=say)
        unseen = CaptionedDigitsDataset("held_out", 16 if tiny else 512, seed=seed + 1).images()
        scale = stages.latent_scale(vae, data.images(range(min(len(data), 1024))))
        vae.register_to_config(scaling_factor=round(scale, 5))
        summary["vae"] = {"steps": run["steps"], "seconds": round(run["seconds"]), "scaling_factor": round(scale, 5),
                          **stages.measure_vae(vae, unseen)}  # fmt: skip
        say(f"      {summary['vae']}")

        say(f"[2/3] text encoder ({sizes.text_layers} layers, width {sizes.text_hidden}), contrastive")
        text_encoder = stages.build_text_encoder(tokenizer, sizes.text_hidden, sizes.text_layers, sizes.text_heads,
                                                 seed=seed)  # fmt: skip
        run = stages.train_text_encoder(text_encoder, tokenizer, data, sizes.text_steps,
                                        minutes=budget(SHARES["text_encoder"]), seed=seed, log=say)  # fmt: skip
        summary["text_encoder"] = {"steps": run["steps"], "seconds": round(run["seconds"]),
                                   **stages.measure_text_encoder(run["pair"], tokenizer, seed, 32 if tiny else 512)}
        say(f"      {summary['text_encoder']}")

        say(f"[3/3] UNet {sizes.unet_channels} with the text-to-image trainer")
        unet = build_unet(sizes, sizes.text_hidden, seed=seed)
        base = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=sampling_scheduler(), requires_safety_checker=False)  # fmt: skip
        unet_started = time.time()
        deadline = None if minutes is None else started + 60 * (minutes - (0 if tiny else EVAL_RESERVE_MINUTES))
        config = TrainingConfig(
            output_dir=os.path.join(work, "unet"), max_steps=sizes.unet_steps, batch_size=sizes.unet_batch_size,
            learning_rate=sizes.unet_learning_rate, lr_schedule="cosine", lr_warmup_steps=min(200, sizes.unet_steps),
            weight_decay=0.01, caption_dropout_prob=0.1, use_ema=True, ema_decay=0.999, ema_warmup=True,
            checkpointing_steps=10**9, checkpoints_total_limit=1, sample_steps=10**9, num_sample_images=0,
            log_steps=50, progress_bar=False, seed=seed,
        )  # fmt: skip
        task = TextToImageTask(base, cache_latents=True)
        trainer = Trainer(task, dataset=data, config=config)
        with StepBudget(trainer, deadline):
            result = trainer.train()
        summary["unet"] = {"steps": result.step, "seconds": round(time.time() - unet_started),
                           "final_loss": round(sum(result.losses[-200:]) / max(1, len(result.losses[-200:])), 4)}
        say(f"      {summary['unet']}")

        pipe = StableDiffusionPipeline.from_pretrained(result.pipeline_path)
        out = os.fspath(output_dir)
        if os.path.isdir(out):
            shutil.rmtree(out)
        pipe.save_pretrained(out)
        shutil.rmtree(os.path.join(out, "tokenizer"))  # the standard CLIP files (vocab.json, merges.txt) instead
        write_digits_tokenizer(os.path.join(out, "tokenizer"))
        summary["training_seconds"] = round(time.time() - started)
        summary["parameters"] = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                                 for name in ("vae", "text_encoder", "unet")}  # fmt: skip
        summary["safetensors_bytes"] = folder_weight_bytes(out)

        say("evaluating with the yardstick")
        pipe = StableDiffusionPipeline.from_pretrained(out)
        summary["evaluation"] = evaluate(pipe, sizes, seed)
        summary["total_seconds"] = round(time.time() - started)
        write_card(out, summary)
        with open(os.path.join(work, "recipe.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        say(f"done in {summary['total_seconds'] / 60:.1f} min: {out}")
        return summary
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


def folder_weight_bytes(folder: str) -> int:
    """Total size of the ``.safetensors`` files under ``folder``."""
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files
               if f.endswith(".safetensors"))  # fmt: skip


def evaluate(pipe: Any, sizes: Sizes = FULL, seed: int = 0, steps: int = DEFAULT_STEPS,
             guidance_scale: float = DEFAULT_GUIDANCE) -> dict[str, Any]:  # fmt: skip
    """The yardstick's figures of ``pipe`` at ``steps`` / ``guidance_scale`` (``sizes.yardstick_prompts`` prompts
    per set), and seconds per image at batch 1 and for a batch of 16 (one timed call each, after a warm-up)."""
    from ..training.text_yardstick import TextToImageYardstick

    pipe.set_progress_bar_config(disable=True)
    yardstick = TextToImageYardstick(seed=seed, epochs=sizes.yardstick_epochs,
                                     images_per_epoch=sizes.yardstick_images_per_epoch)  # fmt: skip

    def generate(prompts: list[str], s: int) -> torch.Tensor:
        return pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pt",
                    generator=torch.Generator().manual_seed(s)).images  # fmt: skip

    figures = yardstick.evaluate(generate, num_per_set=sizes.yardstick_prompts, seed=seed)
    timing = {}
    generate(["a red 7 on a blue background"], 0)  # warm-up
    for n in (1, 16):
        t = time.perf_counter()
        generate(["a red 7 on a blue background"] * n, 0)
        timing[f"seconds_batch_{n}"] = round(time.perf_counter() - t, 3)
    clean = {k: {m: (round(v, 4) if isinstance(v, float) else v) for m, v in d.items()} for k, d in figures.items()}
    return {"steps": steps, "guidance_scale": guidance_scale, "scheduler": type(pipe.scheduler).__name__,
            "yardstick_digit_test_accuracy": round(yardstick.test_accuracy, 4), **clean, **timing,
            "torch_threads": torch.get_num_threads()}  # fmt: skip


def command_line(output_dir: Any, minutes: float | None, tiny: bool, seed: int) -> str:
    """The command that reruns a recipe call."""
    parts = ["torchdiffusion pretrain-embedded", f"--output-dir {os.fspath(output_dir)}"]
    parts.append("--minutes none" if minutes is None else f"--minutes {minutes:g}")
    parts += ["--tiny"] * bool(tiny) + ([f"--seed {seed}"] if seed else [])
    return " ".join(parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options (shared by ``torchdiffusion pretrain-embedded`` and ``python -m``)."""
    p.add_argument("--output-dir", required=True, help="where the pipeline folder goes (replaced if it exists)")
    p.add_argument("--minutes", default="60", help="time budget for the whole recipe ('none': step ceilings only)")
    p.add_argument("--tiny", action="store_true", help="tiny models, a few steps per stage (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="keep the UNet stage's checkpoints and logs here")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Run the recipe for parsed :func:`add_arguments` options."""
    try:
        minutes = None if str(args.minutes).lower() == "none" else float(args.minutes)
    except ValueError:
        raise ValueError(f"--minutes must be a number or 'none', got {args.minutes!r}") from None
    return pretrain_embedded(args.output_dir, minutes, args.tiny, args.seed, args.work_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m torchdiffusion.pretrained.recipe``."""
    parser = argparse.ArgumentParser(prog="python -m torchdiffusion.pretrained.recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    run_from_args(parser.parse_args(argv))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
