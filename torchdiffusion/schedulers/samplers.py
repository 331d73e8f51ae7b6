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
    "lcm": ("LCMScheduler", {}),  # for LCM-LoRA / LCM models: 2-8 steps, guidance_scale 1
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


# ---- AUTOMATIC1111's names (``torchdiffusion serve``; see docs/samplers.md) -------------------------------------

A1111_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE Heun": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
    ),
    "DPM++ 3M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {"set_alpha_to_one": True}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}),
    "LCM": ("LCMScheduler", {}),
}
"""A1111 sampler name -> (scheduler class, config overrides), applied as ``Class.from_config(config, **options)``."""

A1111_SAMPLER_ALIASES: dict[str, str] = {
    "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_2m_sde": "DPM++ 2M SDE",
    "k_dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
    "k_dpmpp_3m_sde": "DPM++ 3M SDE",
    "k_euler_a": "Euler a",
    "k_euler_ancestral": "Euler a",
    "k_euler": "Euler",
    "k_lms": "LMS",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_a": "DPM2 a",
    "ddim": "DDIM",
    "plms": "PLMS",
    "unipc": "UniPC",
    "k_lcm": "LCM",
}
"""A1111's other spellings (k-diffusion function names) -> the sampler name."""

A1111_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "automatic": ("Automatic", {}),
    "karras": ("Karras", {"use_karras_sigmas": True}),
    "exponential": ("Exponential", {"use_exponential_sigmas": True}),
    "beta": ("Beta", {"use_beta_sigmas": True}),
    "sgm_uniform": ("SGM Uniform", {"timestep_spacing": "trailing"}),
}
"""A1111 noise-level grid ("scheduler") name -> (label, config overrides); "automatic" keeps the sampler's own."""

A1111_DEFAULT_SAMPLER = "DPM++ 2M"


def resolve_a1111_sampler(sampler_name: Any, scheduler: Any = None) -> tuple[str, str, str, dict[str, Any]]:
    """(sampler name, grid name, scheduler class name, config overrides) for an A1111 ``sampler_name`` (a name, an
    alias, or a legacy "<name> Karras"/"<name> Exponential") and optional ``scheduler`` (a grid name or label,
    any case). ``ValueError`` naming ``sampler_name`` / ``scheduler`` for unknown ones."""
    if sampler_name is None or sampler_name == "":
        sampler_name = A1111_DEFAULT_SAMPLER
    if not isinstance(sampler_name, str):
        raise TypeError(f"sampler_name must be a string, got {type(sampler_name).__name__}")
    name, grid = A1111_SAMPLER_ALIASES.get(sampler_name, sampler_name), None
    if name not in A1111_SAMPLERS:
        for key, (label, _) in A1111_SCHEDULERS.items():  # legacy names: "DPM++ 2M Karras"
            base = name.removesuffix(" " + label)
            if base != name and base in A1111_SAMPLERS:
                name, grid = base, key
                break
        else:
            raise ValueError(f"sampler_name must be one of {list(A1111_SAMPLERS)}, got {sampler_name!r}")
    if scheduler not in (None, ""):
        if not isinstance(scheduler, str):
            raise TypeError(f"scheduler must be a string, got {type(scheduler).__name__}")
        by_label = {label.lower(): key for key, (label, _) in A1111_SCHEDULERS.items()}
        asked = by_label.get(scheduler.lower(), scheduler.lower())
        if asked not in A1111_SCHEDULERS:
            raise ValueError(f"scheduler must be one of {list(A1111_SCHEDULERS)}, got {scheduler!r}")
        if asked != "automatic" or grid is None:
            grid = asked
    grid = grid or "automatic"
    class_name, options = A1111_SAMPLERS[name]
    return name, grid, class_name, {**options, **A1111_SCHEDULERS[grid][1]}
