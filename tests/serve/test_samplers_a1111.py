"""A1111 sampler names -> scheduler classes and options (torch-free table in schedulers/samplers.py)."""

from __future__ import annotations

import pytest

import torchdiffusion
from torchdiffusion.schedulers.samplers import A1111_SAMPLER_ALIASES, A1111_SAMPLERS, resolve_a1111_sampler


def test_every_class_exists():
    for class_name, _ in A1111_SAMPLERS.values():
        assert hasattr(torchdiffusion, class_name)
    assert set(A1111_SAMPLER_ALIASES.values()) <= set(A1111_SAMPLERS)


@pytest.mark.parametrize(
    "name, scheduler, expected",
    [
        (None, None, ("DPM++ 2M", "automatic", "DPMSolverMultistepScheduler")),
        ("Euler a", None, ("Euler a", "automatic", "EulerAncestralDiscreteScheduler")),
        ("k_dpmpp_2m_sde", None, ("DPM++ 2M SDE", "automatic", "DPMSolverMultistepScheduler")),
        ("DPM++ 2M Karras", None, ("DPM++ 2M", "karras", "DPMSolverMultistepScheduler")),
        ("DPM++ 2M Karras", "Automatic", ("DPM++ 2M", "karras", "DPMSolverMultistepScheduler")),
        ("DPM++ 3M SDE Exponential", None, ("DPM++ 3M SDE", "exponential", "DPMSolverMultistepScheduler")),
        ("LMS", "Karras", ("LMS", "karras", "LMSDiscreteScheduler")),
        ("Euler", "SGM Uniform", ("Euler", "sgm_uniform", "EulerDiscreteScheduler")),
    ],
)
def test_resolve(name, scheduler, expected):
    resolved = resolve_a1111_sampler(name, scheduler)
    assert resolved[:3] == expected


def test_options_combine():
    _, _, _, options = resolve_a1111_sampler("DPM++ 2M SDE", "karras")
    assert options == {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}


@pytest.mark.parametrize(
    "name, scheduler, error, argument",
    [("Euler z", None, ValueError, "sampler_name"), ("Karras", None, ValueError, "sampler_name"),
     (3, None, TypeError, "sampler_name"), ("Euler", "wobbly", ValueError, "scheduler"),
     ("Euler", 1, TypeError, "scheduler")],  # fmt: skip
)
def test_bad_names(name, scheduler, error, argument):
    with pytest.raises(error, match=argument):
        resolve_a1111_sampler(name, scheduler)
