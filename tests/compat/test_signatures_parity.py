"""Constructor signatures are part of the Diffusers surface: config keys and defaults of every scheduler
(``register_to_config`` reads them from the signature), and the arguments of every named UNet block.
Shared bases (``ConsistencyBase``, ``DPM2Base``) and builders must not change them."""

from __future__ import annotations

import inspect
import json
import math

import pytest

pytest.importorskip("diffusers")
import diffusers  # noqa: E402
from diffusers.models.unets import unet_2d_blocks as d_blocks  # noqa: E402

import torchdiffusion as td  # noqa: E402
from torchdiffusion.models.layers import cross_attn_blocks, unet_2d_blocks  # noqa: E402

SCHEDULERS = sorted(n for n in td._LAZY if n.endswith("Scheduler") and not n.startswith("Karras"))
BLOCKS = [n for n in unet_2d_blocks.__all__ if n[0].isupper()] + [
    "CrossAttnDownBlock2D",
    "CrossAttnUpBlock2D",
    "UNetMidBlock2DCrossAttn",
]
# Keys we accept beyond Diffusers (documented on the classes); everything else must match name, order and default.
EXTRA_SCHEDULER_KEYS = {"use_ode_tuned_sigmas"}


def _params(fn) -> list[tuple[str, object]]:
    return [(k, p.default) for k, p in inspect.signature(fn).parameters.items() if k != "self"]


def _same_default(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a is b or (isinstance(a, bool) == isinstance(b, bool) and a == b)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_config_keys_and_defaults_match_diffusers(name):
    theirs = getattr(diffusers, name, None)
    if theirs is None:
        pytest.skip(f"diffusers has no {name}")
    everything = _params(getattr(td, name).__init__)
    expected = _params(theirs.__init__)
    ours = everything[: len(expected)]  # Diffusers' arguments first, in order: positional calls mean the same
    assert [k for k, _ in ours] == [k for k, _ in expected]
    assert {k for k, _ in everything[len(expected) :]} <= EXTRA_SCHEDULER_KEYS
    for (key, a), (_, b) in zip(ours, expected):
        assert _same_default(a, b), f"{name}.{key}: default {a!r}, Diffusers {b!r}"


def test_shared_scheduler_bases_record_each_class_name():
    for name in ("LCMScheduler", "TCDScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"):
        s = getattr(td, name)(beta_start=0.001)
        assert json.loads(s.to_json_string())["_class_name"] == name
        assert type(s).from_config(s.config).config == s.config
        assert s.config.beta_start == 0.001


@pytest.mark.parametrize("name", BLOCKS)
def test_block_arguments_match_diffusers(name):
    ours = getattr(unet_2d_blocks, name, None) or getattr(cross_attn_blocks, name)
    theirs = getattr(d_blocks, name)
    fn_ours = ours.__init__ if isinstance(ours, type) else ours
    fn_theirs = theirs.__init__ if isinstance(theirs, type) else theirs
    got, expected = _params(fn_ours), _params(fn_theirs)
    assert [k for k, _ in got] == [k for k, _ in expected]
    for (key, a), (_, b) in zip(got, expected):
        assert a is inspect.Parameter.empty and b is inspect.Parameter.empty or _same_default(a, b), (name, key, a, b)
