"""Stable Diffusion's AutoencoderKL (128, 256, 512, 512; 2 layers per block) decoding latents on CPU, ours vs
Diffusers on the same weights (fp32). ``--size 64`` is a 512 px image. Runs are interleaved, medians compared.

    python benchmarks/vae_decode.py [--size 64] [--batch 1] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import diffusers
import torch
from bench_check import check_max_diff, exit_if_failed

import torchdiffusion as td

CONFIG = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64, help="latent height and width (image = 8x)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peer = diffusers.AutoencoderKL(**CONFIG).eval()
    ours = td.AutoencoderKL(**CONFIG).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    z = torch.randn(args.batch, 4, args.size, args.size, generator=torch.Generator().manual_seed(1))

    def run(model) -> tuple[float, torch.Tensor]:
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.decode(z).sample
            return time.perf_counter() - start, out

    run(peer), run(ours)  # warm-up
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    diff = 0.0
    for i in range(args.repeats):
        got = {}
        for who in ("peer", "ours") if i % 2 == 0 else ("ours", "peer"):
            elapsed, got[who] = run(peer if who == "peer" else ours)
            times[who].append(elapsed)
        diff = max(diff, float((got["ours"] - got["peer"]).abs().max()))
    o, p = statistics.median(times["ours"]), statistics.median(times["peer"])
    print(f"AutoencoderKL.decode, latent {args.size}x{args.size} ({8 * args.size} px), batch {args.batch}, fp32, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved pairs")  # fmt: skip
    print(f"ours {o:.2f}s  diffusers {p:.2f}s  ours/peer = {o / p:.3f}")
    exit_if_failed(check_max_diff(diff, 1e-4))  # the model parity tolerance of tests/compat


if __name__ == "__main__":
    main()
