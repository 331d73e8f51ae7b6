"""An SD-1.x-shaped UNet2DConditionModel forward on CPU, ours vs Diffusers on the same weights.

SD 1.5's structure and widths (320, 640, 1280, 1280; CrossAttn x3 + Down, 2 layers per block, 8 heads, 768-d CLIP
context of 77 tokens, batch 2 as with classifier-free guidance) on a 32x32 latent (256 px images) so it runs in
seconds; ``--size 64`` is the 512 px case, ``--channels 160 320 640 640`` a narrower model. fp32 (target
ours/peer <= 0.75); ``--bf16`` adds bf16 autocast (slow on CPUs without bf16 units). Runs are interleaved and
medians compared.

    python benchmarks/sd_unet_forward.py [--repeats 5] [--size 32] [--channels 320 640 1280 1280] [--bf16] [--threads N]
"""

import argparse
import contextlib
import statistics
import time

import diffusers
import torch

import torchdiffusion as td


def config(channels):
    return dict(sample_size=64, block_out_channels=tuple(channels), cross_attention_dim=768, attention_head_dim=8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=32, help="latent height and width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, nargs=4, default=[320, 640, 1280, 1280])
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    peer = diffusers.UNet2DConditionModel(**config(args.channels)).eval()
    ours = td.UNet2DConditionModel(**config(args.channels)).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(args.batch, 4, args.size, args.size, generator=g)
    context = torch.randn(args.batch, 77, 768, generator=g)
    t = torch.tensor([500] * args.batch)

    def run(model, autocast):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        start = time.perf_counter()
        with torch.inference_mode(), ctx:
            out = model(sample, t, encoder_hidden_states=context).sample
        return time.perf_counter() - start, out.float()

    modes = [("fp32", False)] + ([("bf16 autocast", True)] if args.bf16 else [])
    print(f"SD-shaped UNet forward: channels {args.channels}, latent {args.size}x{args.size}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    for label, autocast in modes:
        run(peer, autocast), run(ours, autocast)  # warm-up
        times = {"ours": [], "peer": []}
        for i in range(args.repeats):
            order = [("peer", peer), ("ours", ours)] if i % 2 == 0 else [("ours", ours), ("peer", peer)]
            outs = {}
            for name, model in order:
                dt, outs[name] = run(model, autocast)
                times[name].append(dt)
        diff = float((outs["ours"] - outs["peer"]).abs().max())
        o, p = statistics.median(times["ours"]), statistics.median(times["peer"])
        target = "  (target <= 0.75)" if not autocast else ""
        print(f"{label:>14}: ours {o:.3f}s  diffusers {p:.3f}s  ours/peer = {o / p:.3f}{target}  "
              f"max|diff| = {diff:.1e}")


if __name__ == "__main__":
    main()
