"""Parity of the multistep schedulers (DPM-Solver multistep / single-step, DEIS, UniPC, EDM DPM-Solver) with the
real Diffusers package: over {SD's scaled_linear with steps_offset=1, linear, squaredcos_cap_v2} x {10, 25 steps}
x the main options, the timesteps and the final sample of a full loop with a fixed smooth stand-in model equal
Diffusers' to 1e-4 relative. The SDE variants draw the same noise from the same generator, so they match too.

Where Diffusers 0.42.1 breaks (raises, or returns NaN) the case is pinned in ``DIFFUSERS_BREAKS``: the test
checks that Diffusers still breaks in exactly that way (an unexpected break, or an unexpected fix, fails) and that
ours is finite on the same grid; ``test_schedulers_better_than_diffusers.py`` checks ours is also sensible there.
Where Diffusers' float32 coefficients lose precision (noise-prediction updates from the cosine schedule's first
noise level, sigma = 2e4) we compare against Diffusers' own algorithm run with float64 noise levels instead, and
check that ours is the more accurate one.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
import torchdiffusion as td  # noqa: E402

logging.getLogger("diffusers").setLevel(logging.ERROR)
SCHEDULES = {
    "sd": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1),
    "linear": dict(beta_schedule="linear"),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}
STEPS = (10, 25)
COMMON = [
    {},
    dict(use_karras_sigmas=True),
    dict(prediction_type="v_prediction"),
    dict(timestep_spacing="trailing"),
    dict(solver_order=3),
    dict(solver_order=1),
]
OPTIONS = {
    "DPMSolverMultistepScheduler": COMMON + [
        dict(solver_type="heun"),
        dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
        dict(use_exponential_sigmas=True),
        dict(use_lu_lambdas=True),
        dict(timestep_spacing="leading"),
        dict(thresholding=True, prediction_type="sample"),
        dict(euler_at_final=True, solver_order=3),
        dict(solver_order=3, lower_order_final=False, final_sigmas_type="sigma_min"),
        dict(algorithm_type="sde-dpmsolver++"),
        dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min"),
    ],
    "UniPCMultistepScheduler": COMMON + [
        dict(solver_type="bh1", final_sigmas_type="sigma_min"),
        dict(predict_x0=False, final_sigmas_type="sigma_min"),
        dict(disable_corrector=[0, 3]),
        dict(use_exponential_sigmas=True),
        dict(lower_order_final=False),
    ],
    "DEISMultistepScheduler": COMMON + [dict(use_exponential_sigmas=True), dict(timestep_spacing="leading")],
    "DPMSolverSinglestepScheduler": COMMON[:3] + COMMON[4:] + [
        dict(solver_type="heun"),
        dict(solver_type="heun", solver_order=3),
        dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
        dict(final_sigmas_type="sigma_min", solver_order=3),
        dict(algorithm_type="sde-dpmsolver++"),
    ],
}  # fmt: skip
CASES = [
    (name, sched, steps, opt)
    for name, opts in OPTIONS.items()
    for sched in SCHEDULES
    for steps in STEPS
    for opt in opts
]


def _key(name: str, sched: str, steps: int, opt: dict) -> tuple:
    return name, sched, steps, repr(sorted(opt.items()))


# How Diffusers 0.42.1 breaks (exception type name, or "NaN" for a non-finite sample), pinned per case.
DIFFUSERS_BREAKS = {
    **{
        _key(name, "cosine", steps, opt): "IndexError"  # the grid's last sigma index runs past the table
        for name in ("DPMSolverMultistepScheduler", "DEISMultistepScheduler")
        for steps in STEPS
        for opt in (dict(use_karras_sigmas=True), dict(use_exponential_sigmas=True))
    },
    **{_key("DPMSolverSinglestepScheduler", "cosine", s, dict(use_karras_sigmas=True)): "IndexError" for s in STEPS},
    **{
        _key("UniPCMultistepScheduler", "cosine", steps, opt): "AssertionError"
        for steps in STEPS
        for opt in (dict(use_karras_sigmas=True), dict(use_exponential_sigmas=True))
    },
    **{  # the third-order corrector at the step to sigma = 0 divides 0 by 0
        _key("UniPCMultistepScheduler", sched, steps, dict(lower_order_final=False)): "NaN"
        for sched in SCHEDULES
        for steps in STEPS
    },
}


def stand_in_model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed smooth function of the sample and the timestep."""
    t = float(t)
    return torch.tanh(0.7 * x) * (0.5 + 0.4 * torch.cos(torch.tensor(t / 700.0))) + 0.05 * torch.sin(3 * x + t / 200)


def run(s, steps: int, sigmas64: bool = False):
    """A hand-written loop; SDE steps draw from a generator seeded per step. Returns (timesteps, final sample)."""
    s.set_timesteps(steps)
    if sigmas64:
        s.sigmas = s.sigmas.double()
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
    sde = "sde" in str(s.config.get("algorithm_type", ""))
    for t in s.timesteps:
        kw = {"generator": torch.Generator().manual_seed(int(t))} if sde else {}
        x = s.step(stand_in_model(s.scale_model_input(x, t), t), t, x, **kw).prev_sample
    return s.timesteps.clone(), x.float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def precision_limited(sched: str, opt: dict, name: str) -> bool:
    noise_form = name == "DEISMultistepScheduler" or opt.get("algorithm_type") in ("dpmsolver", "sde-dpmsolver")
    return sched == "cosine" and (noise_form or opt.get("predict_x0") is False)


@pytest.mark.parametrize("name,sched,steps,opt", CASES, ids=[f"{n[:-9]}-{s}-{k}-{o}" for n, s, k, o in CASES])
def test_full_loop_matches_diffusers(name, sched, steps, opt):
    cfg = {**SCHEDULES[sched], **opt}
    if name == "DPMSolverSinglestepScheduler":
        cfg.pop("steps_offset", None)  # Diffusers' single-step scheduler has no timestep_spacing/steps_offset
        cfg.pop("timestep_spacing", None)
    broke = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            their_t, theirs = run(getattr(diffusers, name)(**cfg), steps)
        except Exception as e:  # noqa: BLE001
            broke = type(e).__name__
        else:
            broke = "" if torch.isfinite(theirs).all() else "NaN"
    expected = DIFFUSERS_BREAKS.get(_key(name, sched, steps, opt), "")
    assert broke == expected, f"Diffusers: expected {expected or 'no break'}, got {broke or 'no break'}"
    our_t, ours = run(getattr(td, name)(**cfg), steps)
    if broke:  # nothing to compare with: ours must at least be finite on the same grid
        assert torch.isfinite(ours).all()
        return
    assert our_t.dtype == torch.int64 and torch.equal(our_t, their_t.to(torch.int64))
    if precision_limited(sched, opt, name) and rel(ours, theirs) > 1e-4:
        _, theirs64 = run(getattr(diffusers, name)(**cfg), steps, sigmas64=True)
        assert rel(ours, theirs64) < 1e-5 < rel(theirs, theirs64)
    else:
        assert rel(ours, theirs) < 1e-4


def test_every_pinned_break_is_a_case():
    assert set(DIFFUSERS_BREAKS) <= {_key(*case) for case in CASES}


EDM_OPTIONS = [
    {},
    dict(solver_order=3),
    dict(solver_type="heun"),
    dict(prediction_type="v_prediction"),
    dict(sigma_schedule="exponential"),
    dict(final_sigmas_type="sigma_min"),
    dict(algorithm_type="sde-dpmsolver++"),
    dict(thresholding=True),
]


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("opt", EDM_OPTIONS, ids=str)
def test_edm_dpmsolver_matches_diffusers(opt, steps):
    their_t, theirs = run(diffusers.EDMDPMSolverMultistepScheduler(**opt), steps)
    our_t, ours = run(td.EDMDPMSolverMultistepScheduler(**opt), steps)
    torch.testing.assert_close(our_t, their_t)
    assert rel(ours, theirs) < 1e-4


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"])
def test_custom_timesteps_match(name):
    ts = [999, 850, 700, 500, 300, 200, 120, 60, 20, 5]
    theirs, ours = getattr(diffusers, name)(**SCHEDULES["linear"]), getattr(td, name)(**SCHEDULES["linear"])
    for s in (theirs, ours):
        s.set_timesteps(timesteps=ts)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    out = []
    for s in (theirs, ours):
        y = x.clone()
        for t in s.timesteps:
            y = s.step(stand_in_model(y, t), t, y).prev_sample
        out.append(y)
    assert rel(out[1], out[0]) < 1e-4


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"])
def test_image_to_image_start_matches(name):
    """set_begin_index + add_noise at the start timestep, then the rest of the loop (the img2img recipe)."""
    x0 = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    out = []
    for lib in (diffusers, td):
        s = getattr(lib, name)(**SCHEDULES["sd"])
        s.set_timesteps(20)
        s.set_begin_index(8)
        ts = s.timesteps[8:]
        y = s.add_noise(x0, noise, ts[:1].repeat(2))
        for t in ts:
            y = s.step(stand_in_model(y, t), t, y).prev_sample
        out.append(y)
    assert rel(out[1], out[0]) < 1e-4


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"])
def test_sde_reproducible_and_same_statistics(name):
    """Same generator -> same sample (ours alone, and equal to Diffusers'); other seeds -> other samples with the
    same mean and spread as Diffusers' over a batch."""
    cfg = dict(**SCHEDULES["linear"], algorithm_type="sde-dpmsolver++")
    x = torch.randn(256, 2, 2, 2, generator=torch.Generator().manual_seed(0))

    def go(lib, seed):
        s = getattr(lib, name)(**cfg)
        s.set_timesteps(15)
        g, y = torch.Generator().manual_seed(seed), x.clone()
        for t in s.timesteps:  # the exact noise prediction for data ~ N(0, 0.5^2)
            ab = float(s.alphas_cumprod[t])
            y = s.step(y * (1 - ab) ** 0.5 / (ab * 0.25 + 1 - ab), t, y, generator=g).prev_sample
        return y

    a, b = go(td, 3), go(td, 3)
    assert torch.equal(a, b)
    assert rel(a, go(diffusers, 3)) < 1e-4
    c, d = go(td, 4), go(diffusers, 5)
    assert rel(c, a) > 0.01
    assert abs(c.mean() - d.mean()) < 0.05 and abs(c.std() / d.std() - 1) < 0.08
