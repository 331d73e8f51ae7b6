"""Import cost on top of `import torch`, torchdiffusion vs Diffusers, for what a user actually types: the package,
`from X import StableDiffusionPipeline` and `from X import DDPMPipeline` (torchdiffusion's package is lazy, so the
first line alone would flatter it). Each measurement is a fresh process; the two sides alternate which runs first,
and the median of ``--runs`` processes per side is compared.

    python benchmarks/import_time.py [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CODE = "import time, torch; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"
STATEMENTS = ("import {pkg}", "from {pkg} import StableDiffusionPipeline", "from {pkg} import DDPMPipeline")
SIDES = ("torchdiffusion", "diffusers")


def one(stmt: str) -> float:
    """Seconds ``stmt`` takes in a fresh interpreter that has already imported torch."""
    proc = subprocess.run([sys.executable, "-c", CODE.format(stmt=stmt)], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="fresh processes per side and statement")
    args = parser.parse_args()
    ours_import = None
    for template in STATEMENTS:
        times: dict[str, list[float]] = {side: [] for side in SIDES}
        for i in range(args.runs):
            for side in SIDES if i % 2 == 0 else SIDES[::-1]:  # alternate which side runs first
                times[side].append(one(template.format(pkg=side)))
        ours, peer = (statistics.median(times[side]) for side in SIDES)
        ours_import = ours if ours_import is None else ours_import
        print(f"{template.format(pkg='X'):40s} torchdiffusion {ours:.3f}s   diffusers {peer:.3f}s   "
              f"ours/peer = {ours / peer:.3f}  (median of {args.runs})")  # fmt: skip
    print(f"target: import torchdiffusion <= 0.5 s on top of torch -> {'OK' if ours_import <= 0.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
