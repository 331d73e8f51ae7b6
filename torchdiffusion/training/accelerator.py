"""The ``accelerate.Accelerator`` a training run uses: the mixed-precision choice that works on this machine,
a fresh state in a single process, DDP over gloo for several processes on CPUs. ``accelerate`` is imported here,
when a run starts."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch


def cpu_has_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 / AMX, via oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def check_tracker(report_to: str | None) -> None:
    """``ImportError`` naming ``report_to`` when its package (tensorboard / wandb) is not installed."""
    import importlib.util

    if report_to is None:
        return
    packages = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}[report_to]
    if not any(importlib.util.find_spec(name) for name in packages):
        raise ImportError(f"report_to={report_to!r} needs the {packages[0]} package: pip install {packages[0]}")


def make_accelerator(mixed_precision: str, report_to: str | None = None, project_dir: str | None = None) -> Any:
    """An ``accelerate.Accelerator`` for ``mixed_precision`` (``"no"``, ``"fp16"``, ``"bf16"``).

    Without CUDA, fp16 becomes bf16 (with a warning: CPUs have no fp16 autocast here), and bf16 on a CPU without
    native bf16 warns that it is emulated. In a single process an earlier Accelerator's global state is reset
    first. Several processes without CUDA (``torchrun`` / ``accelerate launch`` on CPUs) run DDP over gloo.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if mixed_precision == "fp16" and not torch.cuda.is_available():
        warnings.warn("mixed_precision='fp16' has no autocast on CPU here; training in bf16 (the fast CPU choice)")
        mixed_precision = "bf16"
    if mixed_precision == "bf16" and not torch.cuda.is_available() and not cpu_has_bf16():
        warnings.warn(
            "mixed_precision='bf16' on a CPU without native bf16 (AVX512-BF16/AMX) is emulated and usually much "
            "slower than fp32; use mixed_precision='no' here"
        )
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not distributed and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    cpu = distributed and not torch.cuda.is_available()
    check_tracker(report_to)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, log_with=report_to, project_dir=project_dir)
