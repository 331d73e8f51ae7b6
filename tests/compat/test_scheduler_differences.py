"""Scheduler behaviours where torchdiffusion once differed from Diffusers (issue 11, items 3, 7 and 9): each is
either matched, with a parity test against the real ``diffusers`` here, or kept different on purpose, with its
row in ``docs/compatibility.md`` ("Schedulers") and a test here that pins our behaviour.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore")  # Diffusers' deprecation / config warnings
import torchdiffusion as td  # noqa: E402


def model(x: torch.Tensor, t) -> torch.Tensor:
    return 0.6 * torch.sin(1.1 * x + float(t) / 400.0) + 0.1 * x


def noise(seed: int = 0, shape=(1, 2, 3, 3)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def pair(name: str, **kwargs):
    return getattr(diffusers, name)(**kwargs), getattr(td, name)(**kwargs)


def loop(s, x, timesteps=None, first=None, **kw):
    """Denoise over ``timesteps`` (default: all); ``first`` replaces the first timestep passed (e.g. an int)."""
    for i, t in enumerate(s.timesteps if timesteps is None else timesteps):
        tt = first if (i == 0 and first is not None) else t
        inp = s.scale_model_input(x, tt) if hasattr(s, "scale_model_input") else x
        x = s.step(model(inp, t), tt, x, **kw).prev_sample
    return x


# ---- item 3: integer timesteps on float grids -------------------------------------------------------------------
TWO_STAGE_AND_LMS = [
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
]


@pytest.mark.parametrize("name", TWO_STAGE_AND_LMS)
def test_integer_timestep_on_a_float_grid(name):
    """``step(out, 999, x)`` and ``scale_model_input(x, 999)`` where the schedule holds ``999.0``: as Diffusers."""
    d, o = pair(name)
    for s in (d, o):
        s.set_timesteps(5)
    assert float(o.timesteps[0]) == 999.0
    kw = (lambda: {"generator": torch.Generator().manual_seed(0)}) if "Ancestral" in name else dict
    x = noise() * float(d.init_noise_sigma)
    assert torch.allclose(o.scale_model_input(x, 999), d.scale_model_input(x, 999))
    for s in (d, o):  # scale_model_input started the count: start over
        s.set_timesteps(5)
    expected = loop(d, x, first=999, **kw())
    for first in (999, np.int64(999), torch.tensor(999), torch.tensor([999.0])):
        o.set_timesteps(5)
        assert torch.allclose(loop(o, x, first=first, **kw()), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler"])
@pytest.mark.parametrize("form", [int, float, lambda t: torch.tensor(float(t)), lambda t: torch.tensor([float(t)])])
def test_duplicated_timestep_starts_at_its_second_occurrence(name, form):
    """A two-stage grid lists a timestep twice; a run that starts there (image-to-image, no ``set_begin_index``)
    starts at its second occurrence, the first stage of that step, as in Diffusers, for every timestep form."""
    d, o = pair(name)
    for s in (d, o):
        s.set_timesteps(4)
    t = d.timesteps[2]  # = timesteps[1] for Heun; an integer level for KDPM2 (timesteps[2] = the next step)
    if form is int and not float(t).is_integer():
        pytest.skip("fractional")
    assert o.index_for_timestep(form(t)) == d.index_for_timestep(torch.as_tensor(float(t)))
    x = noise(1)
    expected = loop(d, x, timesteps=d.timesteps[2:], first=form(t))
    assert torch.allclose(loop(o, x, timesteps=o.timesteps[2:], first=form(t)), expected, rtol=1e-4, atol=1e-5)
    assert o.step_index == d.step_index


def test_euler_type_schedulers_still_refuse_an_integer_like_diffusers():
    d, o = pair("EulerDiscreteScheduler")
    for s in (d, o):
        s.set_timesteps(4)
    x = noise()
    with pytest.raises(ValueError):
        d.step(x, 999, x)
    with pytest.raises(ValueError, match="timestep"):
        o.step(x, 999, x)


# ---- item 7: the numbers ----------------------------------------------------------------------------------------
def test_lms_started_part_way_uses_diffusers_order():
    """Image-to-image LMS: Diffusers takes order ``min(step_index + 1, order)`` even with fewer stored slopes."""
    d, o = pair("LMSDiscreteScheduler", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    for s in (d, o):
        s.set_timesteps(10)
        s.set_begin_index(4)
    x = noise() * 3.0
    expected = loop(d, x, timesteps=d.timesteps[4:])
    got = loop(o, x, timesteps=o.timesteps[4:])
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("final_sigmas_type", ["zero", "sigma_min"])
def test_unipc_flow_sigmas_with_karras_spacing(final_sigmas_type):
    kw = dict(use_flow_sigmas=True, use_karras_sigmas=True, prediction_type="flow_prediction")
    d, o = pair("UniPCMultistepScheduler", final_sigmas_type=final_sigmas_type, **kw)
    for s in (d, o):
        s.set_timesteps(6)
    assert torch.equal(o.timesteps, d.timesteps)
    assert torch.allclose(o.sigmas, d.sigmas, rtol=1e-6)
    x = noise()
    assert torch.allclose(loop(o, x), loop(d, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_trained_betas_shorter_than_num_train_timesteps_builds(name):
    """Diffusers builds these (and keeps both keys in the config); so do we, with Diffusers' betas and table. The
    grid then spans the given table (docs/compatibility.md: Diffusers spans num_train_timesteps and clamps)."""
    betas = np.linspace(0.0001, 0.02, 200).tolist()
    d, o = pair(name, trained_betas=betas, num_train_timesteps=1000)
    assert o.config.trained_betas == d.config.trained_betas and o.config.num_train_timesteps == 1000
    assert torch.equal(o.betas, d.betas) and torch.equal(o.alphas_cumprod, d.alphas_cumprod)
    o.set_timesteps(4)
    assert float(o.timesteps[0]) == 199.0 and float(o.sigmas[0]) == pytest.approx(float(d.sigmas.max()), rel=1e-6)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "sigmoid"},
        {"variance_type": "fixed_large", "prediction_type": "v_prediction"},
    ],
)
def test_ddpm_full_loop_in_diffusers_float32(config):
    """1000 DDPM steps: Diffusers computes betas (float32 linspace) and each step's coefficients in float32."""
    d, o = pair("DDPMScheduler", **config)
    assert torch.equal(o.betas, d.betas) and torch.equal(o.alphas_cumprod, d.alphas_cumprod)
    x = noise(3, (1, 2, 4, 4))
    got = loop(o, x, generator=torch.Generator().manual_seed(0))
    expected = loop(d, x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    assert abs(got.abs().sum().item() - expected.abs().sum().item()) < 1e-4


@pytest.mark.parametrize("steps", [5, 6])
def test_dpmsolver_singlestep_lower_order_final(steps):
    """Diffusers rewrites ``lower_order_final=True`` into the config inside ``set_timesteps``; we leave the config
    as built (docs/compatibility.md) and take the same steps."""
    d, o = pair("DPMSolverSinglestepScheduler")
    for s in (d, o):
        s.set_timesteps(steps)
    assert d.config.lower_order_final is True and o.config.lower_order_final is False
    x = noise()
    assert torch.allclose(loop(o, x), loop(d, x), rtol=1e-4, atol=1e-5)


# ---- item 9: stricter than Diffusers? ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_dynamic_thresholding_ratio_zero_accepted(name):
    """Ratio 0 is a valid quantile (the smallest |x0|, clamped to >= 1): accepted, with Diffusers' numbers."""
    d, o = pair(name, thresholding=True, dynamic_thresholding_ratio=0.0, sample_max_value=2.0)
    for s in (d, o):
        s.set_timesteps(4)
    x = noise(shape=(2, 2, 3, 3)) * 3
    kw = (lambda: {"generator": torch.Generator().manual_seed(0)}) if name == "DDPMScheduler" else dict
    assert torch.allclose(loop(o, x, **kw()), loop(d, x, **kw()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value", [1.0, 1.5])
def test_beta_end_one_or_more_refused(value):
    """Diffusers builds it and returns NaN (alpha_t <= 0 makes alpha_bar 0 or negative): refused, naming it."""
    d = diffusers.DDPMScheduler(beta_end=value)
    d.set_timesteps(4)
    x = noise()
    out = loop(d, x, generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(out).all()
    with pytest.raises(ValueError, match="beta_end"):
        td.DDPMScheduler(beta_end=value)
    with pytest.raises(ValueError, match="beta_start"):
        td.EulerDiscreteScheduler(beta_start=value)


def test_unknown_variance_type_refused():
    """Diffusers falls back to ``fixed_small`` for any unknown string (a typo silently changes the noise)."""
    d = diffusers.DDPMScheduler(variance_type="fixed_smal")
    assert d.config.variance_type == "fixed_smal"
    with pytest.raises(ValueError, match="variance_type"):
        td.DDPMScheduler(variance_type="fixed_smal")
    td.DDPMScheduler(variance_type=None)  # None (some old configs) stays accepted: fixed_small
    with pytest.raises(ValueError, match="variance_type"):
        td.DPMSolverMultistepScheduler(variance_type="fixed_smal")


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"])
def test_timestep_not_in_timesteps_refused(name):
    """Diffusers' multistep schedulers take an unknown timestep as the *last* step (a jump to the final sample);
    here it is a ValueError that names the timestep."""
    d, o = pair(name)
    for s in (d, o):
        s.set_timesteps(5)
    x = noise()
    d.step(x, 123, x)
    assert d.step_index == len(d.timesteps)
    with pytest.raises(ValueError, match="timestep=123"):
        o.step(x, 123, x)
    o.set_timesteps(5)
    o.set_begin_index(0)  # a pipeline that fixed the start does not look the timestep up, as in Diffusers
    o.step(x, 123, x)
    assert o.step_index == 1


def test_float_timestep_on_an_integer_grid_accepted():
    """Diffusers' DDPM/DDIM index their table with the timestep and crash on ``999.0``; an integral float works here."""
    d, o = pair("DDIMScheduler")
    for s in (d, o):
        s.set_timesteps(4)
    x = noise()
    t = int(d.timesteps[0])
    with pytest.raises(IndexError):
        d.step(x, float(t), x)
    assert torch.allclose(o.step(x, float(t), x).prev_sample, d.step(x, t, x).prev_sample)
    with pytest.raises(TypeError, match="timestep"):
        o.step(x, t + 0.5, x)


@pytest.mark.parametrize("name", ["KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_kdpm2_sigma_grid_timesteps_are_float32(name):
    d, o = pair(name, use_karras_sigmas=True)
    for s in (d, o):
        s.set_timesteps(4)
    assert d.timesteps.dtype == torch.float64 and o.timesteps.dtype == torch.float32
    assert torch.allclose(o.timesteps.double(), d.timesteps, atol=1e-3)


def test_pndm_v_prediction_converted_per_model_call():
    """Diffusers' PNDM combines the raw v-predictions of several calls and converts the sum to noise with the
    current sample (first order in the step); here each call's v is converted with its own sample and noise level,
    so PNDM keeps its order: closer to a 1000-step DDIM reference at every step count."""
    kw = dict(prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

    def final(s, n):
        s.set_timesteps(n)
        return loop(s, noise(0, (2, 2, 3, 3)))

    reference = final(td.DDIMScheduler(**kw, set_alpha_to_one=False, clip_sample=False), 1000)
    for n in (10, 50):
        ours = (final(td.PNDMScheduler(**kw), n) - reference).abs().max()
        theirs = (final(diffusers.PNDMScheduler(**kw), n) - reference).abs().max()
        assert ours < theirs / 5


@pytest.mark.parametrize("name", ["LCMScheduler", "DDIMScheduler"])
def test_x0_from_noise_prediction_floors_alpha_bar(name):
    """At t = 999 of the cosine schedule alpha_bar is 2.4e-9: Diffusers divides by its square root (5e-5), so an
    epsilon model's small error becomes a huge x0; here alpha_bar is floored at 2**-24 (the floor Diffusers' own
    Euler/DPM schedulers use for zero terminal SNR) before dividing. LCM and TCD share the rule."""
    d, o = pair(name, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    assert float(o.alphas_cumprod[999]) < 2**-24
    for s in (d, o):
        s.set_timesteps(4)
    x = noise()
    out = x + 0.01  # an epsilon prediction that is slightly off

    def x0(s):
        kw = {} if name == "DDIMScheduler" else {"generator": torch.Generator().manual_seed(0)}
        result = s.step(out, 999, x, **kw)
        return result.pred_original_sample if name == "DDIMScheduler" else result.denoised

    x0_d, x0_o = x0(d), x0(o)
    expected_o = (x - (1 - 2**-24) ** 0.5 * out) / 2**-12
    assert torch.allclose(x0_o, expected_o, rtol=1e-3, atol=1e-2)
    assert x0_d.abs().max() > 4 * x0_o.abs().max()
