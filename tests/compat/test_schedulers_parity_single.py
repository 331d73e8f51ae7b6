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
        inp = s.scale_model_input(x, t)
        x = s.step(stand_in_model(inp, t), t, x, **kw).prev_sample
    return x


def assert_parity(name, cfg, steps, step_kwargs=None, seed=None, rtol=1e-4, set_kwargs=None):
    ours, theirs = getattr(td, name)(**cfg), getattr(diffusers, name)(**cfg)
    set_kwargs = set_kwargs if set_kwargs is not None else dict(num_inference_steps=steps)
    ours.set_timesteps(**set_kwargs)
    theirs.set_timesteps(**set_kwargs)
    torch.testing.assert_close(ours.timesteps.double(), theirs.timesteps.double(), rtol=1e-6, atol=1e-4)
    x = start_noise(float(theirs.init_noise_sigma))
    a = loop(ours, x.clone(), step_kwargs, seed)
    b = loop(theirs, x.clone(), step_kwargs, seed)
    assert torch.isfinite(b).all()
    err = ((a - b).abs().max() / b.abs().max()).item()
    assert err < rtol, f"{name} {cfg} steps={steps}: relative error {err:.2e}"


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


@pytest.mark.parametrize("variance_type", ["fixed_small_log", "fixed_large"])
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
