"""Tiny Stable Diffusion pipeline end to end on CPU: torchdiffusion vs Diffusers on the same folder and weights.

Builds the tiny SD folder of the tests (tests/sd_fixtures.py) with Diffusers, loads it in both libraries, and times
full calls (prompt encoding, CFG denoising, VAE decode, PIL output) in fp32 and bf16, interleaving the two
libraries run by run so machine noise hits both alike. Prints median seconds and the ours/Diffusers ratio
(target <= 0.75 in fp32).

    python benchmarks/sd_pipeline.py [--steps 20] [--runs 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import diffusers

    import torchdiffusion as td
    from tests.sd_fixtures import save_tiny_sd

    folder = save_tiny_sd(os.path.join(tempfile.mkdtemp(), "tiny_sd"))
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, threads {args.threads}, steps {args.steps}")
    for dtype in (torch.float32, torch.bfloat16):
        pipes = {
            "diffusers": diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype),
            "ours": td.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype),
        }
        times: dict[str, list[float]] = {name: [] for name in pipes}
        for pipe in pipes.values():
            pipe.set_progress_bar_config(disable=True)
        for run in range(args.runs + 1):  # the first round warms up and is not counted
            for name, pipe in pipes.items():
                start = time.perf_counter()
                generator = torch.Generator().manual_seed(0)
                with torch.no_grad():
                    pipe("a photo of the cat", num_inference_steps=args.steps, generator=generator)
                if run:
                    times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in times.items()}
        ratio = med["ours"] / med["diffusers"]
        print(
            f"{str(dtype):15s} diffusers {med['diffusers'] * 1e3:8.1f} ms   ours {med['ours'] * 1e3:8.1f} ms   "
            f"ratio ours/diffusers {ratio:.2f}x"
        )


if __name__ == "__main__":
    main()
