"""Where Winograd pays on this CPU: each 3x3 convolution shape of a UNet, oneDNN's direct NHWC kernel vs
``cpu_kernels._winograd_conv3x3`` (F(2x2, 3x3) in plain PyTorch ops: transforms + one batched GEMM), and the GEMM
alone.

``cpu_kernels.WINOGRAD_RULES`` (one entry per CPU kind: AVX2, AVX-512) decide which layers take the Winograd path;
rerun this on a new machine (AMX, more cores, another vendor) before moving them. On the 2-core AVX2 EPYC of the CI
machines the Winograd GEMM (K = input channels) runs at ~45-55 GMAC/s against ~80 for the direct kernel (K = 9 x
input channels), so Winograd wins from ~256 channels; on a 2-core AVX-512 Zen 5 the direct kernel runs at 230-280
GMAC/s up to 640 channels and Winograd wins only on 1280-channel layers (``--batch 2 --shapes 1280x1280@8 ...``).

    python benchmarks/conv_kernels.py [--batch 16] [--threads N] [--shapes 64x64@32 128x128@16 ...]

Shapes are ``INxOUT@SIZE``; the default list is the tutorials' 4-level UNet (32 px) plus Stable Diffusion widths.
Prints per shape: milliseconds (median of ``--repeats`` runs), Winograd/direct ratio (< 1: Winograd faster), the
GEMM's share, and the max abs errors of Winograd and of the direct kernel against a float64 convolution; exits 1
when Winograd's error exceeds ``ROUNDOFF_FACTOR`` times the direct kernel's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from bench_check import exit_if_failed
from torch import nn

from torchdiffusion.models.layers import cpu_kernels

# Winograd F(2x2, 3x3) adds a few roundings per output (transform sums of 3-4 terms; its halvings are exact): its
# error against the exact convolution stays within a small multiple of the direct kernel's (2-3x in the published
# analyses, 2.4x measured at model level in tests/compat/test_sd_models_parity.py).
ROUNDOFF_FACTOR = 4

DEFAULT_SHAPES = (
    "64x64@32 128x64@32 192x64@32 64x128@16 128x128@16 192x128@16 256x128@16 128x128@8 256x128@8 384x128@8 "
    "256x256@8 320x320@32 640x640@16 1280x1280@8"
).split()


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"64x128@16"`` -> ``(64, 128, 16)``."""
    try:
        channels, size = text.split("@")
        c_in, c_out = channels.split("x")
        return int(c_in), int(c_out), int(size)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} must look like 64x128@16 (IN x OUT @ SIZE)") from None


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(c_in: int, c_out: int, size: int, batch: int, repeats: int) -> tuple[bool, str]:
    """Whether Winograd's error is within bound, and one table row, for a ``c_in -> c_out`` 3x3 conv on
    ``(batch, c_in, size, size)`` channels-last maps."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1).eval()
    x = torch.randn(batch, c_in, size, size).contiguous(memory_format=torch.channels_last)
    weight = conv.weight.detach().contiguous(memory_format=torch.channels_last)
    tiles = batch * (size // 2) ** 2
    lhs, rhs = torch.randn(16, tiles, c_in), torch.randn(16, c_in, c_out)

    def direct() -> torch.Tensor:
        return F.conv2d(x, weight, conv.bias, 1, 1)

    def winograd() -> torch.Tensor:
        return cpu_kernels._winograd_conv3x3(conv, x)

    def gemm() -> torch.Tensor:
        return torch.bmm(lhs, rhs)

    with torch.no_grad():
        exact = F.conv2d(x.double(), weight.double(), conv.bias.double(), 1, 1)
        direct_error = float((direct().double() - exact).abs().max())
        diff = float((winograd().double() - exact).abs().max())
        ok = diff <= ROUNDOFF_FACTOR * direct_error
        for fn in (direct, winograd, gemm):
            fn()
        d, w, g = (median_ms(fn, repeats) for fn in (direct, winograd, gemm))
    macs = batch * size * size * c_in * c_out * 9
    return ok, (f"{f'{c_in}x{c_out}@{size}':>14} {d:10.2f} {w:12.2f} {w / d:6.2f} {g:8.2f} "
                f"{16 * tiles * c_in * c_out / g / 1e6:12.0f} {macs / d / 1e6:14.0f} {diff:9.1e} "
                f"{direct_error:9.1e}{'' if ok else '  FAIL'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[parse_shape(s) for s in DEFAULT_SHAPES])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"3x3 conv, batch {args.batch}, fp32, channels-last, {torch.get_num_threads()} threads")
    print(f"{'shape':>14} {'direct ms':>10} {'winograd ms':>12} {'ratio':>6} {'GEMM ms':>8} {'GEMM GMAC/s':>12} "
          f"{'direct GMAC/s':>14} {'wino err':>9} {'dir err':>9}")  # fmt: skip
    torch.manual_seed(0)
    oks = []
    for c_in, c_out, size in args.shapes:
        ok, row = measure(c_in, c_out, size, args.batch, args.repeats)
        print(row, flush=True)
        oks.append(ok)
    print(f"errors: max abs vs a float64 conv; bound: Winograd within {ROUNDOFF_FACTOR}x the direct kernel's")
    exit_if_failed(*oks)

if __name__ == "__main__":
    main()
