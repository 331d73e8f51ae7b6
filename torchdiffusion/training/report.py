"""What a training run shows a person: the loss-curve PNG (matplotlib, from the ``train`` extra) and a small JSON
log, both written atomically so a viewer never sees half a file. Sample grids: :mod:`torchdiffusion.utils.image_files`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ..utils.image_files import replace_into


def save_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, default=str)

    replace_into(path, write)


def smooth(values: Sequence[float], window: int | None = None) -> list[float]:
    """The trend line of a noisy (positive) loss curve: the geometric mean of a centred window of ``window`` values
    (default: 1/25 of the curve, and up to 9 on short curves), cut off at the ends. Centred, so it does not lag a
    falling loss; a mean of logarithms, so it runs through the middle of the curve on a log axis."""
    n = len(values)
    if window is None:
        window = max(1, min(9, n // 3), n // 25)
    half = max(0, window // 2)
    logs = [math.log(v) for v in values]
    sums = [0.0]
    for v in logs:
        sums.append(sums[-1] + v)
    out = []
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        out.append(math.exp((sums[hi] - sums[lo]) / (hi - lo)))
    return out


def save_loss_plot(losses: Sequence[float], path: str, title: str = "training loss") -> None:
    """Write a PNG line chart of the per-step ``losses`` to ``path`` (atomically): the raw values light, the smoothed
    trend dark, a log-scaled loss axis. Needs matplotlib (``pip install torchdiffusion[train]``); it is imported
    here only, with the file-only Agg backend."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter
    except ImportError as e:
        raise ImportError("the loss plot needs matplotlib: pip install 'torchdiffusion[train]'") from e

    fig = Figure(figsize=(7.2, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: PNG output without any display or global pyplot state
    ax = fig.add_subplot()
    points = [(i + 1, v) for i, v in enumerate(losses) if math.isfinite(v) and v > 0]
    if len(points) < 2:
        ax.text(0.5, 0.5, "not enough steps yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    else:
        steps, values = zip(*points)
        trend = smooth(values)
        ax.plot(steps, values, color="#a0bee8", linewidth=0.8, label="loss per step")
        ax.plot(steps, trend, color="#143ca0", linewidth=2.0, label=f"smoothed (last {trend[-1]:.4f})")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.01, 0.02, 0.05, 0.1 ...: readable labels
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(steps[0], steps[-1])
        ax.grid(True, which="major", color="#dddddd")
        ax.grid(True, which="minor", axis="y", color="#f0f0f0")
        ax.legend(loc="upper right", framealpha=0.9)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    replace_into(path, lambda tmp: fig.savefig(tmp, format="png"))
