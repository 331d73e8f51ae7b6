"""Named samplers of the CLI (``torchdiffusion generate --scheduler NAME``) and of the in-training sample grids:
name -> (scheduler class, config overrides). Imports nothing (the CLI's ``--help`` stays instant); the
scheduler itself is built by :func:`torchdiffusion.training.recipes.sampling_scheduler`.
"""

from __future__ import annotations

from typing import Any

SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "sde-dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}
"""Sampler names of the CLI and the in-training grids -> (scheduler class, config overrides)."""

DEFAULT_SAMPLER = "sde-dpm++"
"""Stochastic DPM-Solver++ (2M SDE): on briefly trained pixel models the deterministic solvers leave a share of
samples with grainy residual noise; the fresh noise of the SDE form washes it out (``docs/samplers.md``, note 5)."""


def check_sampler(name: Any) -> str:
    """``name`` if it is a key of :data:`SAMPLERS`; ``ValueError`` naming the ``scheduler`` argument otherwise."""
    if name not in SAMPLERS:
        raise ValueError(f"scheduler must be one of {sorted(SAMPLERS)}, got {name!r}")
    return name
