"""Does each speed option keep the quality? The embedded text-to-image model on its yardstick (digit, foreground and
background accuracy, held-out pairs, Fréchet distance) at full compute vs each option alone and the fast preset,
on the same prompts and seeds, with the seconds per image (batch 1) of each.

Quality holds (the issue's rule) when every accuracy is within 2 points of full compute and the Fréchet distance
within 10 % (``ok`` column). With ``--lcm-lora DIR`` (what ``torchdiffusion distill-lcm`` writes) the table gains
``lcm 4``: 4 LCMScheduler steps at guidance 1 with those adapters. The last line times a grid of 16 (one batch) at
full compute.

    python benchmarks/fast_quality.py [--model FOLDER] [--prompts 64] [--threads 2] [--lcm-lora DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

ACCURACIES = ("digit_accuracy", "fg_accuracy", "bg_accuracy")


def variants(full_steps: int) -> dict[str, dict]:
    from torchdiffusion.pipelines.speed_options import FAST_PRESET

    return {
        "full": {"num_inference_steps": full_steps},
        "steps 12": {"num_inference_steps": 12},
        "steps 8": {"num_inference_steps": 8},
        "cache 2": {"num_inference_steps": full_steps, "cache_interval": 2, "cache_depth": 1},
        "cache 3": {"num_inference_steps": full_steps, "cache_interval": 3, "cache_depth": 1},
        "guidance_end 0.5": {"num_inference_steps": full_steps, "guidance_end": 0.5},
        "20: cache 3 + ge 0.5": {"num_inference_steps": 20, "cache_interval": 3, "cache_depth": 1, "guidance_end": 0.5},
        "preset": dict(FAST_PRESET),
    }


def flatten(figures: dict) -> dict[str, float]:
    """One row: accuracies of both prompt sets, held-out pair accuracy, mean FD."""
    ind, held = figures["in_distribution"], figures["held_out"]
    row = {f"{k[:-9]}": ind[k] for k in ACCURACIES}
    row["held_out"] = held["held_out_accuracy"]
    row["fd"] = (ind["frechet_distance"] + held["frechet_distance"]) / 2
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a Stable Diffusion folder (default: the embedded model)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per set (in-distribution, held-out)")
    parser.add_argument("--steps", type=int, default=25, help="full compute's steps (generate's default)")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lcm-lora", default=None, help="an LCM-LoRA folder: adds the 'lcm 4' variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from torchdiffusion import StableDiffusionPipeline
    from torchdiffusion.pretrained import EMBEDDED_MODEL
    from torchdiffusion.training.text_yardstick import TextToImageYardstick

    pipe = StableDiffusionPipeline.from_pretrained(args.model or EMBEDDED_MODEL)
    pipe.set_progress_bar_config(disable=True)
    runs = {name: (pipe, options) for name, options in variants(args.steps).items()}
    if args.lcm_lora:
        from torchdiffusion import LCMScheduler

        lcm = StableDiffusionPipeline.from_pretrained(args.model or EMBEDDED_MODEL)
        lcm.set_progress_bar_config(disable=True)
        lcm.scheduler = LCMScheduler.from_config(lcm.scheduler.config)
        lcm.load_lora_weights(args.lcm_lora)
        runs["lcm 4"] = (lcm, {"num_inference_steps": 4, "guidance_scale": 1.0})
    yardstick = TextToImageYardstick(seed=0)
    rows, seconds = {}, {}
    for name, (runner, options) in runs.items():

        def generate(prompts: list[str], seed: int, runner=runner, options=options) -> torch.Tensor:
            options = {"guidance_scale": args.guidance_scale, **options}
            return runner(prompts, output_type="pt", generator=torch.Generator().manual_seed(seed),
                          **options).images  # fmt: skip

        rows[name] = flatten(yardstick.evaluate(generate, num_per_set=args.prompts, seed=0))
        generate(["a red 7 on a blue background"], 0)  # warm-up, then one image timed (median of 5)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            generate(["a red 7 on a blue background"], 0)
            times.append(time.perf_counter() - t)
        seconds[name] = sorted(times)[2]
    full = rows["full"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.prompts} prompts per set, "
          f"CFG {args.guidance_scale}")  # fmt: skip
    head = ("digit", "fg", "bg", "held", "FD", "s/img", "x full")
    print(f"{'variant':18s} " + " ".join(f"{h:>{8 if h == 'FD' else 6}s}" for h in head) + " ok")
    for name, row in rows.items():
        ok = all(row[k] >= full[k] - 0.02 for k in ("digit", "fg", "bg", "held_out")) and row["fd"] <= 1.1 * full["fd"]
        print(
            f"{name:18s} {row['digit']:6.3f} {row['fg']:6.3f} {row['bg']:6.3f} {row['held_out']:6.3f} "
            f"{row['fd']:8.2f} {seconds[name]:7.3f} {seconds[name] / seconds['full']:6.2f}x {'yes' if ok else 'NO'}"
        )
    grid = ["a red 7 on a blue background"] * 16
    pipe(grid, num_inference_steps=args.steps, guidance_scale=args.guidance_scale, output_type="pt")
    times = []
    for _ in range(3):
        t = time.perf_counter()
        pipe(grid, num_inference_steps=args.steps, guidance_scale=args.guidance_scale, output_type="pt")
        times.append(time.perf_counter() - t)
    print(f"a grid of 16 (one batch) at full compute: {sorted(times)[1]:.2f} s")


if __name__ == "__main__":
    main()
