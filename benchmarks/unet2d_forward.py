"""UNet2DModel forward on CPU, ours vs Diffusers on the same weights (fp32, default settings, no flags).

The tutorials' 4-level butterflies UNet (block_out_channels=(64, 128, 128, 256), Down, Down, AttnDown, AttnDown),
32 px, batch 16. Both models are built from one seed, our state dict is loaded from theirs (strict), outputs
are compared (max abs diff), then the two forwards are timed interleaved (warm-up first) and the median
ratio ours/peer printed (target <= 0.75).

    python benchmarks/unet2d_forward.py [--repeats 10] [--batch 16] [--size 32] [--threads N] [--cpu-time]

On a shared, loaded machine wall-clock ratios are noise; ``--threads 1 --cpu-time`` times each forward by the
process CPU time it consumed (time.process_time), which other processes' load barely disturbs.
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
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(64, 128, 128, 256),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time (use with --threads 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peer = diffusers.UNet2DModel(**CONFIG).eval()
    ours = td.UNet2DModel(**CONFIG).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    t = torch.randint(0, 1000, (args.batch,), generator=g)

    clock = time.process_time if args.cpu_time else time.perf_counter

    def run(model) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            start = clock()
            out = model(x, t).sample
            return clock() - start, out

    run(peer), run(ours), run(peer), run(ours)  # warm-up (oneDNN primitive caches, allocator)
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    ratios = []
    diff = 0.0
    for i in range(args.repeats):
        order = ("peer", "ours") if i % 2 == 0 else ("ours", "peer")
        got = {}
        for who in order:
            elapsed, out = run(peer if who == "peer" else ours)
            times[who].append(elapsed)
            got[who] = out
        ratios.append(times["ours"][-1] / times["peer"][-1])
        diff = max(diff, float((got["ours"] - got["peer"]).abs().max()))
    o, p = statistics.median(times["ours"]), statistics.median(times["peer"])
    print(f"UNet2DModel forward, batch {args.batch}, {args.size}px, fp32, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved pairs, {'CPU' if args.cpu_time else 'wall'} time")  # fmt: skip
    print(f"ours median {o * 1e3:.1f} ms (min {min(times['ours']) * 1e3:.1f})  "
          f"diffusers median {p * 1e3:.1f} ms (min {min(times['peer']) * 1e3:.1f})")  # fmt: skip
    print(f"ours/peer: ratio of medians {o / p:.3f}, median of pair ratios {statistics.median(ratios):.3f}, "
          f"ratio of mins {min(times['ours']) / min(times['peer']):.3f}  (target <= 0.75)")  # fmt: skip
    exit_if_failed(check_max_diff(diff, 1e-4))  # the model parity tolerance of tests/compat


if __name__ == "__main__":
    main()
