"""`import torchdiffusion` cost on top of `import torch`, versus `import diffusers` (median of fresh processes).

    python benchmarks/import_time.py
"""

import statistics
import subprocess
import sys

CODE = "import time, torch; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"


def cost(mod: str, runs: int = 5) -> float:
    return statistics.median(
        float(subprocess.run([sys.executable, "-c", CODE.format(mod=mod)], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1])
        for _ in range(runs)
    )


if __name__ == "__main__":
    ours, peer = cost("torchdiffusion"), cost("diffusers")
    print(f"import torchdiffusion: {ours:.3f}s   import diffusers: {peer:.3f}s   ours/peer = {ours / peer:.3f}")
    print(f"target: torchdiffusion <= 0.5 s on top of torch -> {'OK' if ours <= 0.5 else 'MISSED'}")
