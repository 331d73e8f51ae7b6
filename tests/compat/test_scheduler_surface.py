"""The scheduler surface Diffusers' users depend on, checked against the real ``diffusers`` for every scheduler
class we share with it: "change the import and it works".

Written from Diffusers' documentation and observed behaviour (not from its test files): construction from the
defaults and from each documented constructor argument (same config), ``from_config`` swaps between all
compatible pairs and back, ``save_pretrained``/``from_pretrained`` (also across the two libraries and with a
``subfolder``), ``set_timesteps`` variants, ``step`` with int / float / 0-d / 1-element tensor timesteps,
``scale_model_input``, ``add_noise``, ``init_noise_sigma``, ``order``, ``compatibles`` and the
``step_index``/``begin_index``/``set_begin_index`` bookkeeping. Deliberate differences are listed in
``docs/compatibility.md`` and pinned by tests there (see ``test_scheduler_differences.py``).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore")  # Diffusers' deprecation and config-mismatch warnings
import torchdiffusion as td  # noqa: E402

NAMES = sorted(n for n in td._LAZY if n.endswith("Scheduler") and not n.startswith("Karras") and hasattr(diffusers, n))
OURS_ONLY_KEYS = {"use_ode_tuned_sigmas"}  # documented extensions (see test_signatures_parity.py)
IGNORED_KEYS = {"_class_name", "_diffusers_version"}  # issue 11 item 5, handled with the configuration
STEPS = 4

# A non-default value for each string-valued argument (the first one Diffusers accepts is used).
STRING_ALTERNATIVES = {
    "beta_schedule": ["scaled_linear", "squaredcos_cap_v2"],
    "prediction_type": ["v_prediction", "sample"],
    "timestep_spacing": ["trailing", "leading"],
    "interpolation_type": ["log_linear"],
    "timestep_type": ["continuous"],
    "final_sigmas_type": ["sigma_min", "zero"],
    "algorithm_type": ["dpmsolver", "sde-dpmsolver++", "dpmsolver++"],
    "solver_type": ["heun", "midpoint", "bh1"],
    "sigma_schedule": ["exponential"],
    "time_shift_type": ["linear"],
    "variance_type": ["learned_range"],
}


def pair(name: str, **kwargs):
    """``(diffusers_scheduler, our_scheduler)`` built with the same arguments."""
    return getattr(diffusers, name)(**kwargs), getattr(td, name)(**kwargs)


def norm(value):
    """Config values compared across the libraries: sequences as lists, numpy scalars as Python numbers."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [norm(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def config_of(scheduler) -> dict:
    cfg = {k: norm(v) for k, v in dict(scheduler.config).items() if k not in IGNORED_KEYS | OURS_ONLY_KEYS}
    if "_use_default_values" in cfg:
        cfg["_use_default_values"] = sorted(set(cfg["_use_default_values"]) - OURS_ONLY_KEYS)
    return cfg


def assert_same_config(d, o) -> None:
    a, b = config_of(d), config_of(o)
    assert sorted(a) == sorted(b)
    for k in a:
        assert _same(a[k], b[k]), (k, a[k], b[k])


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed smooth stand-in for a denoiser."""
    return 0.6 * torch.sin(1.1 * x + float(t) / 400.0) + 0.1 * x


def start(scheduler) -> torch.Tensor:
    x = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    return x * float(getattr(scheduler, "init_noise_sigma", 1.0))  # Diffusers' flow matching has none: 1


def step_kwargs(scheduler, seed: int = 0) -> dict:
    """A seeded generator for the schedulers whose step takes one."""
    if "generator" in inspect.signature(scheduler.step).parameters:
        return {"generator": torch.Generator().manual_seed(seed)}
    return {}


def scale(scheduler, x: torch.Tensor, t) -> torch.Tensor:
    """``scale_model_input`` where the class has it (Diffusers' flow matching has none)."""
    return scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x


def run(scheduler, as_timestep=lambda t: t) -> torch.Tensor:
    """A hand-written loop as in Diffusers' docs; ``as_timestep`` turns each ``timesteps`` entry into what the user
    passes (an int, a float, a tensor)."""
    x = start(scheduler)
    kw = step_kwargs(scheduler)
    for t in scheduler.timesteps:
        tt = as_timestep(t)
        x = scheduler.step(model(scale(scheduler, x, tt), t), tt, x, **kw).prev_sample
    return x


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=1e-4, atol=atol)


def same_timesteps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal timesteps, both integer or both floating (Diffusers' KDPM2 Karras grids are float64, ours float32);
    fractional ones to 1e-3 (a last midpoint near t = 0 is 1e-5 in one and 1e-14 in the other)."""
    return a.dtype.is_floating_point == b.dtype.is_floating_point and close(a, b, atol=1e-3)


# ---- construction and config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_defaults_config_order_and_init_noise_sigma(name):
    d, o = pair(name)
    assert_same_config(d, o)
    assert o.order == d.order
    if hasattr(d, "init_noise_sigma"):  # Diffusers' flow matching has none (the start noise is standard normal)
        assert float(o.init_noise_sigma) == pytest.approx(float(d.init_noise_sigma), rel=1e-6)
    assert len(o) == len(d)
    assert {c.__name__ for c in o.compatibles} == {c.__name__ for c in d.compatibles if hasattr(td, c.__name__)}


# (scheduler, argument) whose loop differs from Diffusers' on purpose (docs/compatibility.md, "Schedulers") or for
# a known reason given here.
DIFFERENT_NUMBERS = {
    ("PNDMScheduler", "prediction_type"): "v-prediction converted per model call (ours) vs after combining",
    ("TCDScheduler", "clip_sample"): "Diffusers' TCD never applies clip_sample",
    ("TCDScheduler", "thresholding"): "Diffusers' TCD never applies thresholding",
    ("LCMScheduler", "beta_schedule"): "cosine: alpha_bar(999) ~ 0, x0 = (x - s eps) / a blows up; ours floors a",
    ("TCDScheduler", "beta_schedule"): "the same",
    # trained_betas = the *linear* table (sigma_max 157, |x| ~ 400): the first predictor step ends one float32 ulp
    # (3e-5) apart, the model sees that at the small midpoint sigma and the ancestral step multiplies it by ~157:
    # 6e-4 relative at the end, round-off and not a formula difference (each step's formula matches)
    ("KDPM2AncestralDiscreteScheduler", "trained_betas"): "float32 round-off amplified, see above",
}


NONE_OR_INFINITE_DEFAULTS = {"shift_terminal": 0.5, "sigma_min": 0.1, "sigma_max": 10.0, "lambda_min_clipped": -5.1}


def _alternative(name: str, arg: str, default):
    """A non-default value for ``arg`` of scheduler ``name`` (``None``: nothing sensible to try)."""
    if arg == "trained_betas":
        return np.linspace(0.0001, 0.02, 1000).tolist()
    if isinstance(default, bool):
        return not default
    if arg in STRING_ALTERNATIVES:
        return [v for v in STRING_ALTERNATIVES[arg] if v != default]
    if isinstance(default, int):
        return {"num_train_timesteps": 500, "solver_order": 3, "original_inference_steps": 40}.get(arg, default + 1)
    if arg in NONE_OR_INFINITE_DEFAULTS:
        return NONE_OR_INFINITE_DEFAULTS[arg]
    if isinstance(default, float):
        return default * 0.5 if math.isfinite(default) and default != 0 else None
    if isinstance(default, list):
        return [0]
    return None


def _arguments():
    for name in NAMES:
        for arg, p in inspect.signature(getattr(diffusers, name).__init__).parameters.items():
            if arg != "self" and p.kind is p.POSITIONAL_OR_KEYWORD:
                yield name, arg, p.default


@pytest.mark.parametrize("name,arg,default", list(_arguments()), ids=lambda v: v if isinstance(v, str) else "")
def test_each_documented_argument(name, arg, default):
    """Every constructor argument Diffusers documents builds here too, with the same config, the same grid and the
    same denoising loop (to 1e-4 of the sample's scale)."""
    value = _alternative(name, arg, default)
    candidates = value if isinstance(value, list) and arg in STRING_ALTERNATIVES else [value]
    for value in candidates:
        if value is None:
            continue
        try:
            d = getattr(diffusers, name)(**{arg: value})
            d_config = config_of(d)  # before set_timesteps, which may rewrite it (see docs/compatibility.md)
            d.set_timesteps(STEPS, **({"mu": 0.5} if d.config.get("use_dynamic_shifting") else {}))
        except Exception:
            continue  # Diffusers refuses it alone (needs another argument): nothing to compare
        o = getattr(td, name)(**{arg: value})
        assert config_of(o) == d_config
        o.set_timesteps(STEPS, **({"mu": 0.5} if o.config.get("use_dynamic_shifting") else {}))
        assert same_timesteps(o.timesteps, d.timesteps)
        try:
            expected = run(d)
        except Exception:  # e.g. learned variance types need a model with twice the channels
            return
        if (name, arg) in DIFFERENT_NUMBERS or not torch.isfinite(expected).all():
            return  # documented difference, or Diffusers gives NaN / inf (tests/compat/test_schedulers_better_...)
        got = run(o)
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max() + 1e-5
        return
    pytest.skip(f"no value of {arg} that Diffusers accepts on its own")


# ---- from_config, save / load --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_from_config_swaps_and_round_trip(name):
    """``Other.from_config(s.config)`` for each compatible class, and back, gives Diffusers' configs."""
    params = inspect.signature(getattr(diffusers, name).__init__).parameters
    sd = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    d, o = pair(name, **{k: v for k, v in sd.items() if k in params})
    for other in d.compatibles:
        if not hasattr(td, other.__name__):
            continue
        d2 = other.from_config(d.config)
        o2 = getattr(td, other.__name__).from_config(o.config)
        assert type(o2).__name__ == other.__name__
        assert_same_config(d2, o2)
        d3, o3 = type(d).from_config(d2.config), type(o).from_config(o2.config)
        assert_same_config(d3, o3)
        assert {k: v for k, v in config_of(o3).items() if not k.startswith("_")} == {
            k: v for k, v in config_of(o).items() if not k.startswith("_")
        }


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_both_ways(name, tmp_path):
    d, o = pair(name, num_train_timesteps=800)
    d.save_pretrained(tmp_path / "d" / "scheduler")
    o.save_pretrained(tmp_path / "o" / "scheduler")
    o_from_d = getattr(td, name).from_pretrained(tmp_path / "d", subfolder="scheduler")
    d_from_o = getattr(diffusers, name).from_pretrained(tmp_path / "o", subfolder="scheduler")
    o_again = getattr(td, name).from_pretrained(tmp_path / "o" / "scheduler")
    for ours, theirs in ((o_from_d, d), (o_again, d), (o, d_from_o)):
        assert {k: v for k, v in config_of(ours).items() if not k.startswith("_")} == {
            k: v for k, v in config_of(theirs).items() if not k.startswith("_")
        }
    over = getattr(td, name).from_pretrained(tmp_path / "o", subfolder="scheduler", num_train_timesteps=600)
    assert over.config.num_train_timesteps == 600


# ---- set_timesteps -------------------------------------------------------------------------------------------
def _flow(name: str) -> bool:
    return name.startswith("FlowMatch")


@pytest.mark.parametrize("name", NAMES)
def test_set_timesteps_variants(name):
    d, o = pair(name)
    for kwargs in ({}, {"device": "cpu"}, {"device": torch.device("cpu")}):
        d.set_timesteps(STEPS, **kwargs)
        o.set_timesteps(STEPS, **kwargs)
        assert same_timesteps(o.timesteps, d.timesteps)
        if hasattr(d, "sigmas") and isinstance(d.sigmas, torch.Tensor):
            assert close(o.sigmas, d.sigmas)
    params = inspect.signature(d.set_timesteps).parameters
    customs = []
    if "timesteps" in params:
        customs.append({"timesteps": [999, 700, 400, 100] if not _flow(name) else [1000.0, 700.0, 400.0, 100.0]})
    if "sigmas" in params:
        customs.append(
            {
                "sigmas": [1.0, 0.7, 0.4, 0.1]
                if _flow(name) or d.config.get("use_flow_sigmas")
                else [14.0, 5.0, 1.0, 0.1]
            }
        )
    for kwargs in customs:
        try:
            d.set_timesteps(**kwargs)
        except Exception:
            continue  # Diffusers refuses it in the default config
        o.set_timesteps(**kwargs)
        assert close(o.timesteps, d.timesteps, atol=1e-3), kwargs
        if hasattr(d, "sigmas") and isinstance(d.sigmas, torch.Tensor):
            assert close(o.sigmas, d.sigmas), kwargs


# ---- step with every form of timestep ------------------------------------------------------------------------
FORMS = {
    "0-d tensor": lambda t: t,
    "1-d tensor": lambda t: t.reshape(1),
    "float": lambda t: float(t),
    "int": lambda t: int(t),
    "python scalar": lambda t: t.item(),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", NAMES)
def test_step_with_each_timestep_form(name, form):
    """A full loop passing timesteps as ints, floats, 0-d or 1-element tensors: where Diffusers accepts the form,
    the result is Diffusers'; where it refuses it, so do we (with a ValueError naming the timestep)."""
    d, o = pair(name)
    d.set_timesteps(STEPS)
    o.set_timesteps(STEPS)
    if form == "int" and not all(float(t).is_integer() for t in d.timesteps):
        pytest.skip("fractional timesteps have no int form")
    try:
        expected = run(d, FORMS[form])
    except (ValueError, TypeError):  # refused on purpose (Euler-type schedulers and ints): refused here too
        with pytest.raises((ValueError, TypeError), match="timestep"):
            run(o, FORMS[form])
        return
    except IndexError:  # Diffusers crashes on a float timestep of an integer table; we take an integral float
        d.set_timesteps(STEPS)
        expected = run(d, lambda t: int(t))
    assert close(run(o, FORMS[form]), expected)


@pytest.mark.parametrize("name", NAMES)
def test_step_return_tuple_and_scale_model_input(name):
    d, o = pair(name)
    d.set_timesteps(STEPS)
    o.set_timesteps(STEPS)
    x = start(d)
    t = d.timesteps[0]
    assert close(scale(o, x, t), scale(d, x, t))
    out_d = d.step(model(x, t), t, x, return_dict=False, **step_kwargs(d))
    out_o = o.step(model(x, t), t, x, return_dict=False, **step_kwargs(o))
    assert isinstance(out_o, tuple) and close(out_o[0], out_d[0])


# ---- add_noise, step_index / begin_index ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_add_noise(name):
    d, o = pair(name)
    d.set_timesteps(STEPS)
    o.set_timesteps(STEPS)
    x0 = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    if not hasattr(d, "add_noise"):
        pytest.skip("no add_noise in Diffusers")
    try:
        expected = d.add_noise(x0, noise, d.timesteps[:2])
    except Exception:
        pytest.skip("Diffusers' add_noise needs more state here")
    assert close(o.add_noise(x0, noise, o.timesteps[:2]), expected)


@pytest.mark.parametrize("name", NAMES)
def test_step_index_and_begin_index(name):
    d, o = pair(name)
    if not hasattr(d, "set_begin_index"):
        assert not hasattr(o, "set_begin_index") or o.begin_index is None
        pytest.skip("Diffusers has no begin_index here")
    for s in (d, o):
        s.set_timesteps(STEPS + 2)
    assert o.step_index is None and o.begin_index is None
    for s in (d, o):
        s.set_begin_index(2)
    assert o.begin_index == d.begin_index == 2
    x = start(d)
    results = []
    for s in (d, o):
        y = x
        for t in s.timesteps[2 * s.order if name.startswith(("Heun", "KDPM2")) else 2 :]:
            y = s.step(model(scale(s, y, t), t), t, y, **step_kwargs(s)).prev_sample
        results.append((y, s.step_index))
    (yd, id_), (yo, io) = results
    assert io == id_
    assert close(yo, yd)


POSITIONAL_EXCEPTIONS = {
    ("PNDMScheduler", "scale_model_input"): "Diffusers: (sample, *args, **kwargs)",
    ("EDMDPMSolverMultistepScheduler", "step"): "shares DPM-Solver's step: variance_noise before return_dict",
    ("FlowMatchEulerDiscreteScheduler", "step"): "per_token_timesteps (before return_dict) is not implemented",
}


@pytest.mark.parametrize("name", NAMES)
def test_positional_arguments_in_diffusers_order(name):
    """Diffusers' positional parameters of ``set_timesteps``/``step`` come first and in its order (ours may add
    keyword extras after them), so positional calls mean the same."""
    for method in ("set_timesteps", "step", "scale_model_input", "add_noise"):
        if not hasattr(getattr(diffusers, name), method) or not hasattr(getattr(td, name), method):
            continue
        theirs = [
            k
            for k, p in inspect.signature(getattr(getattr(diffusers, name), method)).parameters.items()
            if p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        ours = list(inspect.signature(getattr(getattr(td, name), method)).parameters)
        if (name, method) in POSITIONAL_EXCEPTIONS:
            continue
        assert ours[: len(theirs)] == theirs, method
