"""Named samplers of the CLI (``torchdiffusion generate --scheduler NAME``) and of the in-training sample grids:
name -> (scheduler class, config overrides), and :func:`sampling_scheduler`, which builds one for a trained
pixel-space model. Imports no scheduler until one is built (the CLI's ``--help`` stays instant).
"""

from __future__ import annotations

import inspect
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


def sampling_scheduler(name: str, config: Any) -> Any:
    """The scheduler of sampler ``name`` (a key of :data:`SAMPLERS`) for a model trained with ``config``, set up by
    :func:`swap_scheduler`."""
    import torchdiffusion  # the scheduler classes load by name, on first use

    class_name, options = SAMPLERS[check_sampler(name)]
    return swap_scheduler(getattr(torchdiffusion, class_name), config, **options)


def swap_scheduler(scheduler_cls: type, config: Any, **options: Any) -> Any:
    """``scheduler_cls.from_config(config)`` for sampling a pixel-space model trained with ``config``: drops a
    DDPM-only ``variance_type`` the target would refuse, keeps the training scheduler's ``timestep_spacing``
    (an in-memory config marks it defaulted, so the target's own default would apply; a saved folder keeps it,
    and both must sample alike) and turns on dynamic thresholding where the target has it (DPM-Solver, UniPC,
    DEIS...), as Diffusers recommends for pixel-space models. On the cosine schedule the last training steps have
    ``alpha_t`` ~ 1e-4, where an epsilon model's data estimate ``(x - sigma * eps) / alpha`` blows up; without
    these the first steps saturate many samples. ``options`` (config keys of the target) are applied last."""
    from ..configuration import init_keys

    overrides: dict[str, Any] = {}
    accepted = init_keys(scheduler_cls)
    variance = inspect.signature(scheduler_cls.__init__).parameters.get("variance_type")
    fixed_variance = config.get("variance_type") not in (None, "learned", "learned_range")
    if fixed_variance and (variance is None or variance.default is None):  # DDPM keeps its fixed_* variance
        overrides["variance_type"] = None
    if "timestep_spacing" in config and "timestep_spacing" in accepted:
        overrides["timestep_spacing"] = config["timestep_spacing"]
    if "thresholding" in accepted and not config.get("thresholding", False):
        overrides["thresholding"] = True
    return scheduler_cls.from_config(config, **{**overrides, **options})
