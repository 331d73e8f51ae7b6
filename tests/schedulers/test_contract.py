"""One contract, every scheduler: each public ``*Scheduler`` class of the package (found from the lazy name map, so
a new class is covered the day it is exported) must

* round-trip its config through ``scheduler_config.json``;
* swap with every class in its ``_compatibles`` via ``from_config`` and back without losing a key;
* step through a full loop with outputs of the sample's shape, dtype and device;
* ``add_noise`` per sample, more noise at the first timestep than at the last;
* reject bad ``set_timesteps`` arguments with a ``ValueError``/``TypeError`` naming the argument;
* give independent copies (``scheduler.copy()``) that can run interleaved with the same results as one by one.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch

import torchdiffusion as td

NAMES = sorted(n for n in td._LAZY if n.endswith("Scheduler") and not n.startswith("Karras"))
CLASSES = [getattr(td, n) for n in NAMES]
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)


def make(cls, **overrides):
    """An instance with a Stable-Diffusion-like config where the class takes those keys."""
    params = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in {**SD, **overrides}.items() if k in params})


def model(x: torch.Tensor, t) -> torch.Tensor:
    t = float(t)
    return 0.6 * torch.sin(x + t / 400.0) + 0.05 * x


def takes(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def run(s, x: torch.Tensor, seed: int = 0, steps: int = 6) -> torch.Tensor:
    """A full hand-written loop (the tutorials' shape) on a fresh grid."""
    s.set_timesteps(steps)
    x = x * s.init_noise_sigma
    gen = torch.Generator().manual_seed(seed)
    kw = {"generator": gen} if takes(s.step, "generator") else {}
    for t in s.timesteps:
        x = s.step(model(s.scale_model_input(x, t), t).to(x.dtype), t, x, **kw).prev_sample
    return x


def public_config(s) -> dict:
    return {k: v for k, v in s.config.items() if not k.startswith("_")}


@pytest.fixture(params=CLASSES, ids=NAMES)
def cls(request):
    return request.param


def test_every_diffusers_scheduler_family_is_exported():
    for name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler", "DDIMScheduler"):
        assert name in NAMES


def test_config_json_round_trip(cls, tmp_path):
    s = make(cls)
    s.save_config(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert data["_class_name"] == cls.__name__
    again = cls.from_config(cls.load_config(tmp_path))
    assert public_config(again) == json.loads(json.dumps(public_config(s)))


def test_from_config_swaps_with_every_compatible_and_back(cls):
    s = make(cls)
    names = [n for n in cls._compatibles if n != cls.__name__ and n in td._LAZY]
    for name in names:
        other = getattr(td, name).from_config(s.config)
        back = cls.from_config(other.config)
        assert public_config(back) == public_config(s), f"{cls.__name__} -> {name} -> back lost or changed keys"
    assert all(c.__name__ in [cls.__name__, *names] for c in s.compatibles)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_keeps_shape_dtype_device(cls, dtype):
    s = make(cls)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float32).to(dtype)
    out = run(s, x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()


# As in Diffusers: DDPM steps over the full training chain, and the sigma-space schedulers start on the full training
# grid, so these step without set_timesteps; every other scheduler must ask for it.
STEP_WITHOUT_SET_TIMESTEPS = {
    "DDPMScheduler",
    "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LMSDiscreteScheduler",
}


def test_step_before_set_timesteps_works_or_says_so(cls):
    s = make(cls)
    x = torch.zeros(1, 1, 2, 2)
    t = s.timesteps[0] if s.timesteps is not None else 999
    if cls.__name__ in STEP_WITHOUT_SET_TIMESTEPS:
        out = s.step(x + 1, t, x + 1).prev_sample
        assert out.shape == x.shape and torch.isfinite(out).all() and not torch.equal(out, x + 1)
    else:
        with pytest.raises(ValueError, match="set_timesteps"):
            s.step(x, t, x)


def test_pinned_names_exist():
    assert STEP_WITHOUT_SET_TIMESTEPS <= set(NAMES)


def test_add_noise(cls):
    s = make(cls)
    s.set_timesteps(10)
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    t_hi, t_lo = s.timesteps[:1], s.timesteps[-1:]

    def noise_share(t):
        xt = s.add_noise(x0, noise, t)
        assert xt.shape == x0.shape and xt.dtype == x0.dtype and torch.isfinite(xt).all()
        return torch.nn.functional.cosine_similarity(xt.flatten(), noise.flatten(), dim=0)

    assert noise_share(t_hi) > noise_share(t_lo)
    both = s.add_noise(x0, noise, torch.cat([t_hi, t_lo]))  # one timestep per sample
    torch.testing.assert_close(both[:1], s.add_noise(x0[:1], noise[:1], t_hi))
    torch.testing.assert_close(both[1:], s.add_noise(x0[1:], noise[1:], t_lo))


@pytest.mark.parametrize("bad", [0, -3])
def test_set_timesteps_rejects_non_positive_steps(cls, bad):
    s = make(cls)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(bad)


def test_set_timesteps_rejects_non_integer_steps(cls):
    s = make(cls)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.set_timesteps(2.5)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.set_timesteps("10")


def test_set_timesteps_rejects_more_steps_than_training(cls):
    s = make(cls, num_train_timesteps=100)
    if not hasattr(s, "alphas_cumprod"):
        pytest.skip("continuous-time scheduler: any number of steps is valid")
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(101)


def test_bad_constructor_choices_name_the_argument(cls):
    params = inspect.signature(cls.__init__).parameters
    for key in ("beta_schedule", "prediction_type", "timestep_spacing"):
        if key in params:
            with pytest.raises(ValueError, match=key):
                cls(**{key: "no-such-choice"})


def test_copies_are_independent(cls):
    s = make(cls)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    a_alone, b_alone = run(s.copy(), x, seed=5), run(s.copy(), x * 0.5, seed=6)
    # interleave two copies step by step: no state may leak between them or into the original
    a, b = s.copy(), s.copy()
    a.set_timesteps(6)
    b.set_timesteps(6)
    xa, xb = x * a.init_noise_sigma, x * 0.5 * b.init_noise_sigma
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)
    kw = takes(s.step, "generator")
    for ta, tb in zip(a.timesteps, b.timesteps):
        xa = a.step(model(a.scale_model_input(xa, ta), ta), ta, xa, **({"generator": ga} if kw else {})).prev_sample
        xb = b.step(model(b.scale_model_input(xb, tb), tb), tb, xb, **({"generator": gb} if kw else {})).prev_sample
    torch.testing.assert_close(xa, a_alone)
    torch.testing.assert_close(xb, b_alone)
    assert s.num_inference_steps is None  # the original never had a grid set


# Diffusers' classes with a ``previous_timestep`` method; the others (Euler, Heun, LMS, ... on fractional
# timesteps) have none, and neither have ours.
HAS_PREVIOUS_TIMESTEP = {"DDPMScheduler", "LCMScheduler", "TCDScheduler"}


def test_previous_timestep_only_where_diffusers_has_it_and_it_works(cls):
    s = make(cls)
    assert hasattr(s, "previous_timestep") == (cls.__name__ in HAS_PREVIOUS_TIMESTEP)
    if cls.__name__ not in HAS_PREVIOUS_TIMESTEP:
        return
    s.set_timesteps(4)
    ts = [int(t) for t in s.timesteps]
    assert [s.previous_timestep(t) for t in ts] == ts[1:] + [-1]
    assert s.previous_timestep(torch.tensor(ts[0])).item() == ts[1]


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler"])
def test_karras_grids_step_without_previous_timestep(name):
    """Fractional timesteps (Karras sigmas) run a full loop; nothing on the class needs integer timesteps."""
    s = make(getattr(td, name), use_karras_sigmas=True)
    out = run(s, torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert not (s.timesteps == s.timesteps.round()).all() and torch.isfinite(out).all()
