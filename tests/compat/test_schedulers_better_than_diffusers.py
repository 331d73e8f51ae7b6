"""Where Diffusers 0.42.1 breaks, ours gives a finite, sensible sample or a clear ValueError.

Each test first checks that Diffusers still breaks in the pinned way (a test FAILS, not skips, if Diffusers
stops breaking there: the claim would then be stale), then checks ours.
"Sensible" is measured on data whose answer is known: ``x0 ~ N(0, 0.5^2)``, for which the exact noise prediction is
linear in the sample and a good sampler returns samples with standard deviation 0.5.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
import torchdiffusion as td  # noqa: E402

logging.getLogger("diffusers").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore")
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
MULTISTEP = ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler",
             "UniPCMultistepScheduler"]  # fmt: skip


def gaussian_eps(s, x: torch.Tensor, t) -> torch.Tensor:
    """The exact noise prediction for data N(0, 0.5^2) under the scheduler's training schedule (fractional
    timesteps: log-linear between training noise levels, the inverse of the schedulers' sigma_to_t)."""
    ab = s.alphas_cumprod.double()
    log_sigmas = ((1 - ab) / ab).sqrt().log().numpy()
    sigma = math.exp(np.interp(float(t), np.arange(len(log_sigmas)), log_sigmas))
    ab = 1 / (1 + sigma**2)
    return x * (1 - ab) ** 0.5 / (ab * 0.25 + 1 - ab)


def run(s, steps: int, batch: int = 256, seed: int = 0) -> torch.Tensor:
    s.set_timesteps(steps)
    x = torch.randn(batch, 2, 2, 2, generator=torch.Generator().manual_seed(seed)) * s.init_noise_sigma
    gen = torch.Generator().manual_seed(seed + 1)
    for t in s.timesteps:
        kw = {"generator": gen} if "generator" in s.step.__code__.co_varnames else {}
        x = s.step(gaussian_eps(s, s.scale_model_input(x, t), t), t, x, **kw).prev_sample
    return x


def diffusers_breaks(fn) -> str:
    """Run ``fn`` on Diffusers; return how it broke ('' if it did not)."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001
        return type(e).__name__
    return "" if torch.isfinite(out).all() else "NaN"


def assert_diffusers_breaks(fn, expected: str) -> None:
    """Diffusers 0.42.1 (pinned in pyproject) breaks exactly as ``expected`` (an exception type name, or "NaN")."""
    got = diffusers_breaks(fn)
    assert got == expected, f"Diffusers was pinned to break with {expected}, got {got or 'no break'}: claim is stale"


def assert_sensible(x: torch.Tensor, tol: float = 0.1) -> None:
    assert torch.isfinite(x).all()
    assert abs(x.std().item() - 0.5) < tol and abs(x.mean().item()) < tol


# ---- the three cases named in the issue -----------------------------------------------------------------------
@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                                  "DPMSolverSinglestepScheduler", "DEISMultistepScheduler"])  # fmt: skip
def test_karras_sigmas_on_cosine_schedule(name, steps):
    cfg = dict(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True)
    expected = "AssertionError" if name == "UniPCMultistepScheduler" else "IndexError"
    assert_diffusers_breaks(lambda: run(getattr(diffusers, name)(**cfg), steps, batch=4), expected)
    # finite and of the data's scale (10 Karras steps over the cosine range 0.006..2e4 are a coarse grid)
    assert_sensible(run(getattr(td, name)(**cfg), steps), tol=0.1 if steps > 10 else 0.25)


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2", "scaled_linear"])
def test_unipc_bh1_is_finite(beta_schedule):
    cfg = dict(beta_schedule=beta_schedule, solver_type="bh1")
    assert_diffusers_breaks(lambda: run(diffusers.UniPCMultistepScheduler(**cfg), 10, batch=4), "NaN")
    ours = run(td.UniPCMultistepScheduler(**cfg), 10)
    assert_sensible(ours)
    bh2 = run(td.UniPCMultistepScheduler(beta_schedule=beta_schedule), 10)
    assert ((ours - bh2).norm() / bh2.norm()).item() < 0.1  # the two UniPC variants agree


@pytest.mark.parametrize("name", MULTISTEP + ["EDMDPMSolverMultistepScheduler", "DDIMScheduler", "DDPMScheduler"])
@pytest.mark.parametrize("bad", [0, -1])
def test_set_timesteps_zero_or_negative(name, bad):
    """Diffusers accepts the count (an empty grid: the loop returns its input unchanged) or fails deep inside
    (ZeroDivisionError, TypeError, RuntimeError); none of its messages names the argument. Ours: a ValueError that
    does."""
    try:
        getattr(diffusers, name)().set_timesteps(bad)
        diffusers_says = ""
    except Exception as e:  # noqa: BLE001
        diffusers_says = f"{type(e).__name__}: {e}"
    assert not (diffusers_says.startswith("ValueError") and "num_inference_steps" in diffusers_says), diffusers_says
    with pytest.raises(ValueError, match="num_inference_steps"):
        getattr(td, name)().set_timesteps(bad)


# ---- more cases found while porting ---------------------------------------------------------------------------
def test_unipc_noise_prediction_to_zero():
    """predict_x0=False with the default final_sigmas_type='zero': Diffusers' last step is 0 * inf = NaN."""
    cfg = dict(**SD, predict_x0=False)
    assert_diffusers_breaks(lambda: run(diffusers.UniPCMultistepScheduler(**cfg), 10, batch=4), "NaN")
    ours = run(td.UniPCMultistepScheduler(**cfg), 10)
    assert_sensible(ours)


@pytest.mark.parametrize("extra", [{}, dict(use_karras_sigmas=True, final_sigmas_type="sigma_min")])
def test_unipc_third_order_without_lower_order_final(extra):
    """Diffusers solves a singular system at the step to sigma = 0 (LinAlgError), or divides 0 by 0 on a last step
    of length zero (NaN)."""
    cfg = dict(**SD, solver_order=3, lower_order_final=False, **extra)
    expected = "NaN" if extra else "_LinAlgError"
    assert_diffusers_breaks(lambda: run(diffusers.UniPCMultistepScheduler(**cfg), 10, batch=4), expected)
    assert_sensible(run(td.UniPCMultistepScheduler(**cfg), 10))


@pytest.mark.parametrize("name,cfg", [
    ("DPMSolverMultistepScheduler", dict(**SD, algorithm_type="sde-dpmsolver", solver_order=3)),
    ("EDMDPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=3)),
])  # fmt: skip
def test_third_order_sde_variants_that_diffusers_lacks(name, cfg):
    """Diffusers has no such update (UnboundLocalError / missing noise argument); its noise-prediction algorithms
    also refuse to end at sigma = 0, which ours allow."""
    their_cfg = {**cfg, "final_sigmas_type": "sigma_min"} if name.startswith("DPM") else cfg
    expected = "UnboundLocalError" if name.startswith("DPM") else "AttributeError"
    assert_diffusers_breaks(lambda: run(getattr(diffusers, name)(**their_cfg), 10, batch=4), expected)
    s = getattr(td, name)(**cfg)
    if name.startswith("EDM"):
        s.set_timesteps(25)
        x = torch.randn(256, 2, 2, 2, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
        g = torch.Generator().manual_seed(1)
        for t in s.timesteps:  # exact EDM denoiser of N(0, 0.5^2): D = x * 0.25 / (0.25 + sigma^2)
            sigma = float(s.sigmas[s.step_index or 0])
            d = x * 0.25 / (0.25 + sigma**2)
            c_skip, c_out = 0.25 / (sigma**2 + 0.25), sigma * 0.5 / (sigma**2 + 0.25) ** 0.5
            x = s.step((d - c_skip * x) / c_out, t, x, generator=g).prev_sample
        assert_sensible(x)
    else:
        assert_sensible(run(s, 25))


def test_single_step_third_order_sde_keeps_the_data_scale():
    """Diffusers' 3rd-order SDE-DPM-Solver++ (heun) has a sign error in its curvature term (``- 0.5`` where the
    integral gives ``+ 0.5``): its samples blow up. Ours converges to the data distribution."""
    cfg = dict(**SD, algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun")
    theirs = run(diffusers.DPMSolverSinglestepScheduler(**cfg), 30)
    assert torch.isfinite(theirs).all() and abs(theirs.std().item() - 0.5) >= 0.2, "Diffusers no longer drifts"
    assert_sensible(run(td.DPMSolverSinglestepScheduler(**cfg), 30), tol=0.12)


def test_multistep_third_order_sde_curvature_term_is_consistent():
    """The same sign error in the multistep 3rd-order SDE update: with no noise, outputs that are a quadratic in
    lambda, and small steps, Diffusers' update misses the exact one by O(h^2) per step, ours by O(h^3)."""
    s_d = diffusers.DPMSolverMultistepScheduler(**SD, algorithm_type="sde-dpmsolver++", solver_order=3)
    s_d.set_timesteps(200)
    i = 100
    sig = [float(v) for v in s_d.sigmas[i - 2 : i + 2]]
    lam = [-math.log(v) for v in sig]  # lambda = -log(sigma_ve)
    outs = [torch.full((1, 1), (lam[j] - lam[2]) ** 2 + 0.3) for j in (0, 1, 2)]  # at s2, s1, s0
    x = torch.ones(1, 1)
    s_d._step_index = i
    theirs = s_d.multistep_dpm_solver_third_order_update(outs, sample=x, noise=torch.zeros(1, 1)).item()
    from torchdiffusion.core import exponential_integrators as M

    levels = [M.alpha_sigma(v) for v in (sig[2], sig[1], sig[0])]
    step = M.multistep(levels, M.alpha_sigma(sig[3]), 3, "data", True, "dpmsolver_3m")
    ours = step.apply(x, outs[::-1], noise=torch.zeros(1, 1)).item()
    # exact: x_t = (s_t/s_0) e^-h x + 2 a_t int_0^h e^{-2(h-u)} D(u) du
    a_t, s_t = M.alpha_sigma(sig[3])
    s_0 = M.alpha_sigma(sig[2])[1]
    h = lam[3] - lam[2]
    n = 20000
    us = [h * (k + 0.5) / n for k in range(n)]
    integral = sum(math.exp(-2 * (h - u)) * (u * u + 0.3) for u in us) * h / n
    exact = s_t / s_0 * math.exp(-h) + 2 * a_t * integral
    assert abs(ours - exact) < abs(theirs - exact) / 10


def test_add_noise_before_set_timesteps_uses_the_training_schedule():
    """Diffusers' multistep schedulers look the timestep up in a reversed table before set_timesteps: add_noise at
    t=999 (training) adds almost no noise. Ours matches DDPMScheduler.add_noise, as training loops expect."""
    x0, noise = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    t = torch.tensor([999, 500, 10])
    want = td.DDPMScheduler(**SD).add_noise(x0, noise, t)
    for name in MULTISTEP:
        theirs = getattr(diffusers, name)(**SD).add_noise(x0, noise, t)
        assert not torch.allclose(theirs, want, atol=1e-3), f"Diffusers' {name} fixed add_noise: claim is stale"
        torch.testing.assert_close(getattr(td, name)(**SD).add_noise(x0, noise, t), want, rtol=1e-5, atol=1e-6)


def test_single_step_set_timesteps_does_not_rewrite_the_config():
    """Diffusers' DPMSolverSinglestepScheduler.set_timesteps registers lower_order_final=True into its config (a
    copy shared with the pipeline's saved config changes behind the user's back). Ours keeps the config."""
    theirs = diffusers.DPMSolverSinglestepScheduler()
    theirs.set_timesteps(7)
    assert theirs.config.lower_order_final is True, "Diffusers no longer rewrites its config: claim is stale"
    ours = td.DPMSolverSinglestepScheduler()
    ours.set_timesteps(7)
    assert ours.config.lower_order_final is False
    assert torch.isfinite(run(ours, 7, batch=2)).all()


def test_learned_variance_with_four_channel_latents():
    """variance_type='learned_range': Diffusers keeps the first 3 channels of the output (right only for RGB);
    ours keeps as many channels as the sample has."""
    x = torch.randn(1, 4, 2, 2)
    out = torch.cat([0.1 * x, torch.zeros_like(x)], dim=1)  # eps then variance, 8 channels
    for lib, expect_ok in ((diffusers, False), (td, True)):
        s = lib.DPMSolverMultistepScheduler(variance_type="learned_range")
        s.set_timesteps(5)
        try:
            y = s.step(out, s.timesteps[0], x).prev_sample
            ok = y.shape == x.shape
        except Exception:  # noqa: BLE001
            ok = False
        assert ok == expect_ok, f"{lib.__name__}: 4-channel learned variance {'works' if ok else 'fails'}"


@pytest.mark.parametrize("name", MULTISTEP)
def test_timestep_not_in_the_grid_is_a_clear_error(name):
    """Diffusers silently treats an unknown timestep as the last step; ours says what is wrong."""
    s = getattr(td, name)(**SD)
    s.set_timesteps(10)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="timestep"):
        s.step(x, 123456, x)
