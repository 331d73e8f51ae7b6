"""Parity of the single-step schedulers with the real Diffusers package (the test-only oracle).

For each scheduler, over beta schedules x spacings x prediction types x step counts: the timesteps and the
final sample of a full denoising loop with a fixed smooth stand-in model must equal Diffusers' to 1e-4
relative; stochastic schedulers must give the same samples under the same generator.
"""

from __future__ import annotations

import itertools

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 noise from Diffusers' LMS/scipy
import torchdiffusion as td  # noqa: E402

SCHEDULES = {
    "sd": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1),
    "linear": dict(beta_schedule="linear"),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}
STEPS = (10, 25)


def stand_in_model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed smooth function of the sample and the (possibly fractional) timestep."""
    t = float(t)
    return 0.7 * torch.sin(1.3 * x + t / 300.0) + 0.1 * x * torch.cos(torch.tensor(t / 500.0))


def start_noise(sigma: float = 1.0) -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * sigma


def loop(s, x, step_kwargs=None, seed=None):
    """A hand-written denoising loop, as in the tutorials; returns the final sample."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    kw = dict(step_kwargs or {})
    if gen is not None:
        kw["generator"] = gen
    for t in s.timesteps:
        inp = s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x  # Diffusers' flow: none
        x = s.step(stand_in_model(inp, t), t, x, **kw).prev_sample
    return x


# Cases whose float32 round-off exceeds ``rtol * max|b|``, pinned: (scheduler, config, steps). In these three the
# start sample is x_T = sigma0 * n with sigma0 = 2.03e4 (the cosine schedule's sigma_max) and |n| up to 3.9, so the
# first update x_T + (sigma1 - sigma0) * d, which cancels |x_T| ~ 8e4 down to O(sigma1), is rounded at a magnitude
# where one float32 ulp is eps32 * |x_T| ~ 1e-2; later steps do not damp it (v-prediction at sigma ~ 2e4). Measured
# floor: moving Diffusers' own start sample by one ulp moves its final sample by 3.4e-4 (Euler ancestral, 10 steps),
# 6.0e-2 (KDPM2, 10) and 1.0e-2 (KDPM2, 25), and Diffusers and ours are each 3e-4 .. 5.6e-2 from a float64 run of
# ours (ours never more than 1.02x farther). Ours agrees with Diffusers to 6.8e-4, 2.1e-3, 1.1e-3: only these three
# get the absolute allowance atol = eps32 * sigma0 = 2.4e-3 (below every one of the measured floors but the first,
# where it is 7x it); every other case must meet ``rtol`` alone, and a pinned case that does is an unexpected pass.
ROUNDOFF_LIMITED = {
    ("EulerAncestralDiscreteScheduler", "squaredcos_cap_v2-v_prediction", 10),
    ("KDPM2DiscreteScheduler", "squaredcos_cap_v2-v_prediction", 10),
    ("KDPM2DiscreteScheduler", "squaredcos_cap_v2-v_prediction", 25),
}


def _roundoff_key(name: str, cfg: dict, steps) -> tuple:
    return name, "-".join(str(v) for k, v in sorted(cfg.items()) if k in ("beta_schedule", "prediction_type")), steps


def assert_parity(name, cfg, steps, step_kwargs=None, seed=None, rtol=1e-4, set_kwargs=None):
    """Same timesteps, and the same final sample to ``rtol`` of its size (plus, in the pinned ROUNDOFF_LIMITED
    cases only, the float32 round-off allowance derived above)."""
    ours, theirs = getattr(td, name)(**cfg), getattr(diffusers, name)(**cfg)
    set_kwargs = set_kwargs if set_kwargs is not None else dict(num_inference_steps=steps)
    ours.set_timesteps(**set_kwargs)
    theirs.set_timesteps(**set_kwargs)
    torch.testing.assert_close(ours.timesteps.double(), theirs.timesteps.double(), rtol=1e-6, atol=1e-3)
    sigma0 = float(getattr(theirs, "init_noise_sigma", 1.0))
    x = start_noise(sigma0)
    a = loop(ours, x.clone(), step_kwargs, seed)
    b = loop(theirs, x.clone(), step_kwargs, seed)
    assert torch.isfinite(b).all()
    err, bound = (a - b).abs().max().item(), rtol * b.abs().max().item()
    only_cfg = len(cfg) == len([k for k in cfg if k in ("beta_schedule", "prediction_type")])
    pinned = only_cfg and not step_kwargs and set_kwargs == dict(num_inference_steps=steps)
    pinned = pinned and _roundoff_key(name, cfg, steps) in ROUNDOFF_LIMITED
    if pinned:
        assert err > bound, f"{name} {cfg} steps={steps}: pinned as round-off limited, but meets rtol alone"
        bound += torch.finfo(torch.float32).eps * sigma0
    assert err <= bound, f"{name} {cfg} steps={steps}: max abs error {err:.2e} > {bound:.2e}"


def cases(*option_sets):
    """Every schedule x steps x one option set (dicts merged)."""
    return [
        pytest.param({**SCHEDULES[s], **opts}, n, id=f"{s}-{n}-" + "-".join(f"{k}={v}" for k, v in opts.items()))
        for s, n, opts in itertools.product(SCHEDULES, STEPS, option_sets)
    ]


VP_OPTIONS = [
    {},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "sample"},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace"},
    {"clip_sample": False},
    {"thresholding": True},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
]


# ---- DDPM ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, steps", cases(*VP_OPTIONS))
def test_ddpm_parity_under_the_same_generator(cfg, steps):
    assert_parity("DDPMScheduler", cfg, steps, seed=1)


@pytest.mark.parametrize("variance_type", ["fixed_small_log", "fixed_large", None])
def test_ddpm_variance_types(variance_type):
    assert_parity("DDPMScheduler", dict(variance_type=variance_type), 10, seed=3)


def test_ddpm_custom_timesteps():
    assert_parity("DDPMScheduler", {}, None, seed=2, set_kwargs=dict(timesteps=[999, 700, 400, 120, 0]))


def test_ddpm_learned_range():
    cfg = dict(variance_type="learned_range")
    ours, theirs = td.DDPMScheduler(**cfg), diffusers.DDPMScheduler(**cfg)
    for s in (ours, theirs):
        s.set_timesteps(10)
    outs = []
    for s in (ours, theirs):
        x, g = start_noise(), torch.Generator().manual_seed(4)
        for t in s.timesteps:
            out = torch.cat([stand_in_model(x, t), torch.tanh(x)], dim=1)
            x = s.step(out, t, x, generator=g).prev_sample
        outs.append(x)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_ddpm_full_chain_without_set_timesteps():
    cfg = dict(num_train_timesteps=50)
    ours, theirs = td.DDPMScheduler(**cfg), diffusers.DDPMScheduler(**cfg)
    a, b = loop(ours, start_noise(), seed=0), loop(theirs, start_noise(), seed=0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ---- DDIM ---------------------------------------------------------------------------------------------------
DDIM_OPTIONS = [o for o in VP_OPTIONS if o.get("timestep_spacing") != "linspace"] + [{"set_alpha_to_one": False}]


@pytest.mark.parametrize("cfg, steps", cases(*DDIM_OPTIONS))
def test_ddim_parity(cfg, steps):
    assert_parity("DDIMScheduler", cfg, steps)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_under_the_same_generator(eta):
    assert_parity("DDIMScheduler", SCHEDULES["sd"], 10, step_kwargs=dict(eta=eta), seed=5)


def test_ddim_use_clipped_model_output():
    assert_parity("DDIMScheduler", {}, 10, step_kwargs=dict(use_clipped_model_output=True, eta=0.3), seed=6)


def test_ddim_linspace_differs_only_by_diffusers_fixed_stride():
    """Known, intended difference: Diffusers' DDIM always steps by ``T // n``, which on a linspace grid lands
    between grid points (999 -> 900 while the next model call is told 888). We step to the next grid point, so
    only the grids are compared here."""
    ours, theirs = td.DDIMScheduler(timestep_spacing="linspace"), diffusers.DDIMScheduler(timestep_spacing="linspace")
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    assert torch.isfinite(loop(ours, start_noise())).all()


# ---- add_noise / get_velocity -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("sched", list(SCHEDULES))
def test_add_noise_and_velocity(name, sched):
    ours, theirs = getattr(td, name)(**SCHEDULES[sched]), getattr(diffusers, name)(**SCHEDULES[sched])
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=1e-5, atol=1e-7)
    x0, noise = start_noise(), torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 777])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_config_files_load_both_ways(name, tmp_path):
    cfg = dict(SCHEDULES["sd"], prediction_type="v_prediction", timestep_spacing="trailing")
    getattr(diffusers, name)(**cfg).save_pretrained(tmp_path / "d")
    getattr(td, name)(**cfg).save_pretrained(tmp_path / "t")
    ours = getattr(td, name).from_pretrained(tmp_path / "d")
    theirs = getattr(diffusers, name).from_pretrained(tmp_path / "t")
    for k, v in cfg.items():
        assert ours.config[k] == v and theirs.config[k] == v
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()


# ---- k-diffusion style schedulers (sigma space) ---------------------------------------------------------------
SIGMA_OPTIONS = [
    {},
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True},
    {"use_beta_sigmas": True},
    {"prediction_type": "v_prediction"},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "leading"},
]


def sigma_cases(*option_sets, skip=()):
    return [c for c in cases(*option_sets) if not any(k in c.id for k in skip)]


@pytest.mark.parametrize(
    "cfg, steps",
    cases(
        *SIGMA_OPTIONS,
        {"interpolation_type": "log_linear"},
        {"final_sigmas_type": "sigma_min"},
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
        {"timestep_type": "continuous", "prediction_type": "v_prediction"},
    ),
)
def test_euler_parity(cfg, steps):
    assert_parity("EulerDiscreteScheduler", cfg, steps)


def test_euler_churn_under_the_same_generator():
    assert_parity("EulerDiscreteScheduler", SCHEDULES["sd"], 10, step_kwargs=dict(s_churn=1.0), seed=3)


def test_euler_custom_sigmas_and_timesteps():
    assert_parity("EulerDiscreteScheduler", SCHEDULES["sd"], None, set_kwargs=dict(sigmas=[14.6, 6.0, 2.0, 0.5, 0.0]))
    assert_parity("EulerDiscreteScheduler", {}, None, set_kwargs=dict(timesteps=[999, 800, 500, 200, 10]))


@pytest.mark.parametrize(
    "cfg, steps",
    cases({}, {"prediction_type": "v_prediction"}, {"timestep_spacing": "trailing"}, {"timestep_spacing": "leading"}),
)
def test_euler_ancestral_same_samples_under_the_same_generator(cfg, steps):
    assert_parity("EulerAncestralDiscreteScheduler", cfg, steps, seed=7)


@pytest.mark.parametrize("cfg, steps", cases(*SIGMA_OPTIONS))
def test_lms_parity(cfg, steps):
    assert_parity("LMSDiscreteScheduler", cfg, steps)


@pytest.mark.parametrize("cfg, steps", cases(*SIGMA_OPTIONS, {"clip_sample": True}))
def test_heun_parity(cfg, steps):
    assert_parity("HeunDiscreteScheduler", cfg, steps)


# Diffusers' KDPM2 with Karras sigmas on the cosine schedule repeats t=999, skips a step and returns NaN
# (tests/schedulers/test_kdpm2.py checks ours is finite there). Beta sigmas on cosine put 17 of 19 calls near
# sigma = 2e4 and both libraries end at |x| ~ 1e5 (garbage, equal to 2e-4): not a meaningful comparison.
@pytest.mark.parametrize(
    "cfg, steps",
    sigma_cases(*SIGMA_OPTIONS, skip=("cosine-10-use_karras", "cosine-25-use_karras", "cosine-10-use_beta")),
)
def test_kdpm2_parity(cfg, steps):
    assert_parity("KDPM2DiscreteScheduler", cfg, steps)


# Diffusers' KDPM2 ancestral computes sigma_down in float32 and gets NaN/wrong levels on the cosine schedule
# (sigma_max ~ 2e4); see tests/schedulers/test_kdpm2_ancestral.py.
@pytest.mark.parametrize("cfg, steps", sigma_cases(*SIGMA_OPTIONS, skip=("cosine",)))
def test_kdpm2_ancestral_same_samples_under_the_same_generator(cfg, steps):
    assert_parity("KDPM2AncestralDiscreteScheduler", cfg, steps, seed=11)


# The excluded cases where Diffusers 0.42.1 returns NaN, pinned (a fix in Diffusers fails here: move the case back
# into the parity lists); ours stays finite on the same grid and start.
DIFFUSERS_NAN = [
    ("KDPM2DiscreteScheduler", "cosine-10-use_karras_sigmas=True"),
    ("KDPM2DiscreteScheduler", "cosine-25-use_karras_sigmas=True"),
    *[
        ("KDPM2AncestralDiscreteScheduler", f"cosine-{case}")
        for case in ("10-", "10-use_karras_sigmas=True", "10-use_beta_sigmas=True", "10-prediction_type=v_prediction",
                     "25-use_karras_sigmas=True", "25-use_beta_sigmas=True")
    ],
]  # fmt: skip


@pytest.mark.parametrize("name, case", DIFFUSERS_NAN)
def test_excluded_cases_where_diffusers_returns_nan(name, case):
    (param,) = [c for c in cases(*SIGMA_OPTIONS) if c.id == case]
    cfg, steps = param.values
    seed = 11 if "Ancestral" in name else None
    outs = []
    for lib in (diffusers, td):
        s = getattr(lib, name)(**cfg)
        s.set_timesteps(steps)
        outs.append(loop(s, start_noise(float(s.init_noise_sigma)), seed=seed))
    assert not torch.isfinite(outs[0]).all() and torch.isfinite(outs[1]).all()


# ---- PNDM -----------------------------------------------------------------------------------------------------
# v_prediction is left out on purpose: Diffusers converts v to eps only after combining outputs of different
# timesteps; we convert each output where it was made (exact on a known model: tests/schedulers/test_pndm.py).
@pytest.mark.parametrize(
    "cfg, steps",
    cases(
        {},
        {"skip_prk_steps": True},
        {"skip_prk_steps": True, "set_alpha_to_one": True},
        {"timestep_spacing": "linspace"},
    ),
)
def test_pndm_parity(cfg, steps):
    assert_parity("PNDMScheduler", cfg, steps)


# ---- EDM and flow matching --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg",
    [{}, {"sigma_schedule": "exponential"}, {"prediction_type": "v_prediction"}, {"final_sigmas_type": "sigma_min"}],
)
@pytest.mark.parametrize("steps", STEPS)
def test_edm_euler_parity(cfg, steps):
    assert_parity("EDMEulerScheduler", cfg, steps)


FLOW = [
    ({}, {}),
    ({"shift": 3.0}, {}),
    ({"use_dynamic_shifting": True}, {"mu": 0.8}),
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.2}),
    ({"shift": 2.0, "shift_terminal": 0.1}, {}),
    ({"shift": 3.0, "use_karras_sigmas": True}, {}),
    ({"use_exponential_sigmas": True}, {}),
    ({"use_beta_sigmas": True}, {}),
    ({"invert_sigmas": True}, {}),
]


@pytest.mark.parametrize("cfg, extra", FLOW)
@pytest.mark.parametrize("steps", STEPS)
def test_flow_match_euler_parity(cfg, extra, steps):
    assert_parity("FlowMatchEulerDiscreteScheduler", cfg, steps, set_kwargs=dict(num_inference_steps=steps, **extra))


def test_flow_match_custom_sigmas_and_stochastic():
    sig = [1.0, 0.8, 0.55, 0.3, 0.1]
    assert_parity("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, None, set_kwargs=dict(sigmas=sig))
    assert_parity("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}, 10, seed=2)


# ---- consistency models ----------------------------------------------------------------------------------------
LCM_OPTIONS = [
    ({}, {}),
    ({"prediction_type": "v_prediction"}, {}),
    ({"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, {}),
    ({"clip_sample": True}, {}),
    ({"set_alpha_to_one": False}, {}),
    ({}, {"strength": 0.6}),
    ({}, {"original_inference_steps": 100}),
]


@pytest.mark.parametrize("name", ["LCMScheduler", "TCDScheduler"])
@pytest.mark.parametrize("cfg, extra", LCM_OPTIONS)
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_consistency_parity_under_the_same_generator(name, cfg, extra, steps):
    if name == "TCDScheduler" and cfg.get("clip_sample"):
        # Known difference: Diffusers' TCD ignores clip_sample; ours applies it (tests/schedulers/test_tcd.py).
        # Pin the claim: Diffusers gives the same sample with and without it.
        runs = []
        for clip in (True, False):
            s = diffusers.TCDScheduler(**{**cfg, "clip_sample": clip})
            s.set_timesteps(num_inference_steps=steps, **extra)
            runs.append(loop(s, start_noise(), seed=5))
        assert torch.equal(*runs)
        return
    assert_parity(name, cfg, steps, seed=5, set_kwargs=dict(num_inference_steps=steps, **extra))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_tcd_eta(eta):
    assert_parity("TCDScheduler", {}, 4, seed=5, step_kwargs=dict(eta=eta))


@pytest.mark.parametrize("name", ["LCMScheduler", "TCDScheduler"])
def test_consistency_custom_timesteps(name):
    for strength in (1.0, 0.5):
        ours, theirs = getattr(td, name)(), getattr(diffusers, name)()
        ours.set_timesteps(timesteps=[999, 759, 499, 259], strength=strength)
        theirs.set_timesteps(timesteps=[999, 759, 499, 259], strength=strength)
        assert ours.timesteps.tolist() == theirs.timesteps.tolist()


# ---- add_noise for every scheduler -------------------------------------------------------------------------------
ALL = [
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "EDMEulerScheduler",
    "LCMScheduler",
    "TCDScheduler",
]


@pytest.mark.parametrize("name", ALL)
def test_add_noise_matches(name):
    ours, theirs = getattr(td, name)(), getattr(diffusers, name)()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x0, noise = start_noise(), torch.randn(2, 3, 8, 8)
    t = theirs.timesteps[[1, 4]]
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)


def test_flow_scale_noise_matches():
    ours, theirs = td.FlowMatchEulerDiscreteScheduler(shift=3.0), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x0, noise = start_noise(), torch.randn(2, 3, 8, 8)
    t = theirs.timesteps[[2, 6]]
    torch.testing.assert_close(ours.scale_noise(x0, t, noise), theirs.scale_noise(x0, t, noise))
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.scale_noise(x0, t, noise))


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler"])
def test_img2img_begin_index(name):
    """Image-to-image: start part-way with set_begin_index, noise the image with add_noise, then denoise."""
    outs = []
    for lib in (td, diffusers):
        s = getattr(lib, name)(**SCHEDULES["sd"])
        s.set_timesteps(10)
        start = 4 * s.order
        s.set_begin_index(start)
        t = s.timesteps[start:]
        x = s.add_noise(start_noise(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9)), t[:1])
        for tt in t:
            x = s.step(stand_in_model(s.scale_model_input(x, tt), tt), tt, x).prev_sample
        outs.append(x)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
