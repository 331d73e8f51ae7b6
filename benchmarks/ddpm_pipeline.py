"""DDPMPipeline end to end on CPU, ours vs Diffusers on the same weights (fp32, default settings).

The tutorials' 4-level butterflies UNet at 32 px, batch 16; runs are interleaved and the median ratio printed.

    python benchmarks/ddpm_pipeline.py [--steps 20] [--repeats 3]
"""

import argparse
import statistics
import time

import diffusers
import numpy as np
import torch
from bench_check import check_max_diff, exit_if_failed

import torchdiffusion as td

CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(64, 128, 128, 256),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    peer_unet = diffusers.UNet2DModel(**CONFIG).eval()
    ours_unet = td.UNet2DModel(**CONFIG).eval()
    ours_unet.load_state_dict(peer_unet.state_dict())
    peer = diffusers.DDPMPipeline(unet=peer_unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000))
    ours = td.DDPMPipeline(unet=ours_unet, scheduler=td.DDPMScheduler(num_train_timesteps=1000))
    for p in (peer, ours):
        p.set_progress_bar_config(disable=True)

    def run(p):
        t = time.perf_counter()
        out = p(batch_size=args.batch, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                output_type="np").images
        return time.perf_counter() - t, out

    run(peer), run(ours)  # warm-up
    times = {"ours": [], "peer": []}
    for _ in range(args.repeats):
        tp, img_p = run(peer)
        to, img_o = run(ours)
        times["peer"].append(tp)
        times["ours"].append(to)
    diff = float(np.abs(img_p - img_o).max())
    o, p = statistics.median(times["ours"]), statistics.median(times["peer"])
    print(f"DDPMPipeline batch {args.batch}, {args.steps} steps, 32px, fp32, {torch.get_num_threads()} threads")
    print(f"ours {o:.3f}s  diffusers {p:.3f}s  ours/peer = {o / p:.3f}  (target <= 0.75)")
    exit_if_failed(check_max_diff(diff, 1e-4))  # [0, 1] pixels; the pipeline parity tolerance of tests/compat


if __name__ == "__main__":
    main()
