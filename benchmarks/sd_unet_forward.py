"""An SD-1.x-shaped UNet2DConditionModel forward on CPU, ours vs Diffusers on the same weights.

SD 1.5's structure and widths (320, 640, 1280, 1280; CrossAttn x3 + Down, 2 layers per block, 8 heads, 768-d CLIP
context of 77 tokens, batch 2 as with classifier-free guidance) on a 32x32 latent (256 px images) so it runs in
seconds; ``--size 64`` is the 512 px case, ``--channels 160 320 640 640`` a narrower model. fp32 (target
ours/peer <= 0.75); ``--bf16`` adds bf16 autocast (slow on CPUs without bf16 units). Runs are interleaved and
medians compared.

On a GPU, ``--device cuda --dtype fp16`` times both models with fp16 weights (CUDA synchronised around each
forward); ``--compile`` also times ``torch.compile`` of each model (compile time printed, not counted).

    python benchmarks/sd_unet_forward.py [--repeats 5] [--size 32] [--channels 320 640 1280 1280] [--bf16] [--threads N]
    python benchmarks/sd_unet_forward.py --device cuda --dtype fp16 --size 64 --repeats 20 [--compile]
"""

import argparse
import contextlib
import statistics
import time

import diffusers
import torch
from bench_check import check_max_diff, exit_if_failed

import torchdiffusion as td

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weight and input dtype")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of both models")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    torch.manual_seed(0)
    peer = diffusers.UNet2DConditionModel(**config(args.channels)).eval()
    ours = td.UNet2DConditionModel(**config(args.channels)).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    if device.type != "cpu" or dtype != torch.float32:
        peer, ours = peer.to(device, dtype), ours.to(device, dtype)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(args.batch, 4, args.size, args.size, generator=g).to(device, dtype)
    context = torch.randn(args.batch, 77, 768, generator=g).to(device, dtype)
    t = torch.tensor([500] * args.batch, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(model, autocast):
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        sync()
        start = time.perf_counter()
        with torch.inference_mode(), ctx:
            out = model(sample, t, encoder_hidden_states=context).sample
        sync()
        return time.perf_counter() - start, out.float()

    modes = [(args.dtype, False, peer, ours)]
    if args.bf16:
        modes.append(("bf16 autocast", True, peer, ours))
    if args.compile:
        started = time.perf_counter()
        compiled = torch.compile(peer), torch.compile(ours)
        for model in compiled:
            run(model, False)
        print(f"torch.compile + first call of both models: {time.perf_counter() - started:.1f}s")
        modes.append((f"{args.dtype} compiled", False, *compiled))
    print(f"SD-shaped UNet forward: channels {args.channels}, latent {args.size}x{args.size}, batch {args.batch}, "
          f"{device}, {torch.get_num_threads()} threads")
    oks = []
    for label, autocast, peer_model, our_model in modes:
        run(peer_model, autocast), run(our_model, autocast)  # warm-up
        times = {"ours": [], "peer": []}
        for i in range(args.repeats):
            order = [("peer", peer_model), ("ours", our_model)]
            outs = {}
            for name, model in order if i % 2 == 0 else order[::-1]:
                dt, outs[name] = run(model, autocast)
                times[name].append(dt)
        diff = float((outs["ours"] - outs["peer"]).abs().max())
        o, p = statistics.median(times["ours"]), statistics.median(times["peer"])
        target = "  (target <= 0.75)" if label == "fp32" else ""
        print(f"{label:>14}: ours {o:.3f}s ({1 / o:.2f} UNet calls/s)  diffusers {p:.3f}s  ours/peer = {o / p:.3f}"
              f"{target}")  # fmt: skip
        if label.startswith("fp32"):  # eager or compiled: the model parity tolerance of tests/compat
            oks.append(check_max_diff(diff, 1e-4, f"{label:>14}: max |ours - diffusers|"))
        else:  # fp16 / bf16: no bound is claimed for reduced precision
            print(f"{label:>14}: max |ours - diffusers| = {diff:.1e}  (reduced precision: not checked)")
    exit_if_failed(*oks)


if __name__ == "__main__":
    main()
