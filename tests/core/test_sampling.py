"""The stateless functional API (core.sampling) and the named grids (core.grids)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

import torchdiffusion as td
from torchdiffusion.core import grids
from torchdiffusion.core.sampling import SOLVERS, VPDenoiser, get_sigmas, sample

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
SMIN, SMAX = 0.0292, 14.6146


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact x0 estimate for data N(0, 0.5^2): x * 0.25 / (0.25 + sigma^2)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return x * 0.25 / (0.25 + s**2)


def start(sigmas, n=2048, seed=0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * float(sigmas[0])


# ---- grids ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", grids.GRIDS)
@pytest.mark.parametrize("n", [1, 5, 10, 13, 20])
def test_named_grids_are_descending_in_range(name, n):
    s = get_sigmas(name, n, SMIN, SMAX)
    assert s.shape == (n + 1,) and s[-1] == 0
    assert s[0] == pytest.approx(SMAX) and (s[:-1] >= SMIN * 0.999).all()
    assert (torch.diff(s) < 0).all()


def test_ays_grid_reproduces_the_published_levels():
    s = get_sigmas("ays_sd15", 10, SMIN, SMAX)
    want = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0]
    np.testing.assert_allclose(s.numpy(), want, rtol=2e-3, atol=1e-3)


def test_named_grid_errors_name_the_argument():
    with pytest.raises(ValueError, match="grid"):
        get_sigmas("no-such-grid", 10, SMIN, SMAX)
    with pytest.raises(ValueError, match="sigma_min"):
        get_sigmas("karras", 10, 1.0, 0.5)
    with pytest.raises(ValueError, match="num_inference_steps"):
        get_sigmas("karras", 0, SMIN, SMAX)


def test_custom_sigmas_give_fractional_timesteps_used_exactly():
    s = td.DPMSolverMultistepScheduler(**SD)
    sig = get_sigmas("exponential", 8, SMIN, SMAX).numpy()
    s.set_timesteps(sigmas=sig)
    assert s.timesteps.dtype == torch.float32 and not torch.equal(s.timesteps, s.timesteps.round())
    np.testing.assert_allclose(s.sigmas.numpy(), sig, rtol=1e-6)
    with pytest.raises(ValueError, match="sigmas"):
        s.set_timesteps(sigmas=[1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="timesteps"):
        s.set_timesteps(timesteps=[10, 500, 3])


def test_use_ode_tuned_sigmas():
    s = td.UniPCMultistepScheduler(**SD, use_ode_tuned_sigmas=True, predict_x0=False, solver_order=3)
    s.set_timesteps(10)
    want = np.append(grids.named_sigmas("ode_tuned", 10, float(s._train_sigmas[0]), float(s._train_sigmas[-1])), 0)
    np.testing.assert_allclose(s.sigmas.numpy(), want, rtol=1e-6)
    with pytest.raises(ValueError, match="use_ode_tuned_sigmas"):
        td.UniPCMultistepScheduler(use_ode_tuned_sigmas=True, use_karras_sigmas=True).set_timesteps(10)


# ---- the sampler --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_samples_the_data_distribution(solver):
    sig = get_sigmas("karras", 20, SMIN, SMAX)
    x = sample(gaussian_denoiser, start(sig), sig, solver, generator=torch.Generator().manual_seed(1))
    assert x.shape == (2048, 2) and torch.isfinite(x).all()
    tol = 0.1 if solver == "euler_ancestral" else 0.06  # first order and stochastic: slowest to converge
    assert abs(x.std().item() - 0.5) < tol, x.std()


@pytest.mark.parametrize("solver", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_stochastic_solvers_reproducible(solver):
    sig = get_sigmas("karras", 8, SMIN, SMAX)
    runs = [sample(gaussian_denoiser, start(sig), sig, solver, generator=torch.Generator().manual_seed(k))
            for k in (3, 3, 4)]  # fmt: skip
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize(
    "solver,cls,cfg",
    [
        ("dpmpp_2m", td.DPMSolverMultistepScheduler, {}),
        ("dpmpp_2m_sde", td.DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++")),
        ("unipc", td.UniPCMultistepScheduler, dict(lower_order_final=False)),
        ("deis", td.DEISMultistepScheduler, dict(solver_order=3, lower_order_final=False)),
    ],
)
def test_functional_api_equals_the_scheduler(solver, cls, cfg):
    """A VP model wrapped by VPDenoiser, on the scheduler's own grid: the same sample as the scheduler loop."""

    def model(x, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return (torch.tanh(0.7 * x) * (0.5 + 0.4 * torch.cos(t / 700.0))).float()

    s = cls(**SD, **cfg)
    sig = np.append(grids.named_sigmas("karras", 12, float(s._train_sigmas[0]), float(s._train_sigmas[-1])), 0)
    s.set_timesteps(sigmas=sig)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y, g = x.clone(), torch.Generator().manual_seed(5)
    for t in s.timesteps:
        y = s.step(model(y, t), t, y, **({"generator": g} if "sde" in solver else {})).prev_sample
    denoiser = VPDenoiser(model, s.alphas_cumprod)
    z = sample(denoiser, x * math.sqrt(1 + sig[0] ** 2), sig, solver, generator=torch.Generator().manual_seed(5))
    assert ((z - y).norm() / y.norm()).item() < 1e-4


def test_callback_and_threads():
    sig = get_sigmas("exponential", 6, SMIN, SMAX)
    seen = []
    sample(gaussian_denoiser, start(sig, 4), sig, "dpmpp_2m", callback=lambda d: seen.append(d["i"]))
    assert seen == list(range(6))
    alone = [sample(gaussian_denoiser, start(sig, 64, k), sig, "unipc", order=3) for k in range(4)]
    together = [None] * 4

    def work(k):
        together[k] = sample(gaussian_denoiser, start(sig, 64, k), sig, "unipc", order=3)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        assert torch.equal(a, b)


def test_bad_arguments_name_themselves():
    sig = get_sigmas("karras", 4, SMIN, SMAX)
    x = start(sig, 2)
    with pytest.raises(ValueError, match="solver"):
        sample(gaussian_denoiser, x, sig, "no-such-solver")
    with pytest.raises(ValueError, match="sigmas"):
        sample(gaussian_denoiser, x, [1.0, 2.0, 0.0])
    with pytest.raises(TypeError, match="denoiser"):
        sample("not callable", x, sig)
    with pytest.raises(ValueError, match="order"):
        sample(gaussian_denoiser, x, sig, "deis", order=7)
    with pytest.raises(ValueError, match="solver_type"):
        sample(gaussian_denoiser, x, sig, "unipc", solver_type="bh3")
    with pytest.raises(ValueError, match="prediction_type"):
        VPDenoiser(lambda x, t: x, torch.ones(10) * 0.5, prediction_type="flow")


# ---- one rule for sigma grids (core.grids.check_custom_sigmas) ----------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
def test_a_repeated_level_is_a_step_that_does_not_move(solver):
    sig = get_sigmas("karras", 6, SMIN, SMAX)
    repeated = torch.cat([sig[:3], sig[2:3], sig[3:]])  # level 2 twice
    calls = []
    kw = dict(generator=torch.Generator().manual_seed(2))
    want = sample(gaussian_denoiser, start(sig, 64), sig, solver, **kw)
    kw = dict(generator=torch.Generator().manual_seed(2), callback=lambda d: calls.append(d["i"]))
    got = sample(gaussian_denoiser, start(sig, 64), repeated, solver, **kw)
    assert torch.equal(got, want) and 2 not in calls  # step 2 (level 2 -> level 2) calls no model


def test_scheduler_sigmas_with_a_repeated_final_level_are_accepted_everywhere():
    s = td.UniPCMultistepScheduler(**SD, use_karras_sigmas=True, final_sigmas_type="sigma_min")
    s.set_timesteps(6)
    sig = s.sigmas
    assert sig[-1] == sig[-2]  # Diffusers' own grid repeats its last level
    s.set_timesteps(sigmas=sig.numpy())  # handed back in: the same grid
    np.testing.assert_array_equal(s.sigmas.numpy(), sig.numpy())
    assert torch.isfinite(sample(gaussian_denoiser, start(sig, 8), sig, "unipc")).all()


@pytest.mark.parametrize("bad", [[1.0], [1.0, 2.0, 0.0], [1.0, -0.5], [float("nan"), 0.0]])
def test_the_same_sigma_rule_for_schedulers_and_sample(bad):
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="sigmas"):
        sample(gaussian_denoiser, x, bad)
    with pytest.raises(ValueError, match="sigmas"):
        td.EulerDiscreteScheduler().set_timesteps(sigmas=bad)
    with pytest.raises(ValueError, match="sigmas"):
        grids.check_custom_sigmas(bad)


def test_align_your_steps_table_stands_once():
    from torchdiffusion.schedulers.scheduling_utils import AysSchedules

    assert AysSchedules is grids.AysSchedules
    assert AysSchedules["StableDiffusionSigmas"] == [*grids.AYS_SD15[:-1], 0.0]
    assert AysSchedules["StableDiffusionXLSigmas"] == [*grids.AYS_SDXL[:-1], 0.0]


def test_vp_denoiser_uses_the_schedulers_trained_sigmas():
    euler = td.EulerDiscreteScheduler(**SD, rescale_betas_zero_snr=True)
    d = VPDenoiser(lambda x, t: x, euler.alphas_cumprod)
    np.testing.assert_array_equal(d.sigmas, euler._train_sigmas)  # finite also at zero terminal SNR
    assert math.isfinite(d.sigma_max)
