"""DPM-Solver multistep / single-step, DEIS, UniPC and EDM DPM-Solver: arguments, config swaps and behaviour beyond
the Diffusers parity suite (tests/compat) and the all-scheduler contract (test_contract.py)."""

from __future__ import annotations

import threading

import pytest
import torch

import torchdiffusion as td

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
NAMES = ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler",
         "UniPCMultistepScheduler"]  # fmt: skip


def make(name, **kw):
    cfg = {**SD, **kw}
    if name == "DPMSolverSinglestepScheduler":
        cfg.pop("steps_offset")
    return getattr(td, name)(**cfg)


def loop(s, steps=8, seed=0, **step_kw):
    s.set_timesteps(steps)
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(seed)) * s.init_noise_sigma
    for t in s.timesteps:
        x = s.step(0.3 * torch.tanh(x), t, x, **step_kw).prev_sample
    return x


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "key,value",
    [("solver_order", 4), ("solver_order", 0), ("prediction_type", "velocity"), ("final_sigmas_type", "nope"),
     ("timestep_spacing", "sideways"), ("beta_schedule", "quadratic")],
)  # fmt: skip
def test_bad_config_values_name_the_key(name, key, value):
    cls = getattr(td, name)
    if key == "timestep_spacing" and name == "DPMSolverSinglestepScheduler":
        pytest.skip("the single-step scheduler has no timestep_spacing")
    if key == "final_sigmas_type" and name == "DEISMultistepScheduler":
        pytest.skip("DEIS has no final_sigmas_type")
    with pytest.raises(ValueError, match=key):
        cls(**{key: value})


@pytest.mark.parametrize("name", NAMES)
def test_only_one_sigma_grid(name):
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        getattr(td, name)(use_karras_sigmas=True, use_exponential_sigmas=True)


def test_unknown_algorithm_and_solver_types():
    with pytest.raises(ValueError, match="algorithm_type"):
        td.DPMSolverMultistepScheduler(algorithm_type="dpm++")
    with pytest.raises(ValueError, match="solver_type"):
        td.UniPCMultistepScheduler(solver_type="bh3")
    with pytest.raises(ValueError, match="solver_type"):
        td.EDMDPMSolverMultistepScheduler(solver_type="rk4")


def test_swaps_map_family_specific_values_like_diffusers():
    dpm = td.DPMSolverMultistepScheduler(**SD, solver_type="heun")
    deis = td.DEISMultistepScheduler.from_config(dpm.config)
    assert (deis.config.algorithm_type, deis.config.solver_type) == ("deis", "logrho")
    unipc = td.UniPCMultistepScheduler.from_config(deis.config)
    assert unipc.config.solver_type == "bh2"
    back = td.DPMSolverMultistepScheduler.from_config(deis.config)
    assert (back.config.algorithm_type, back.config.solver_type) == ("dpmsolver++", "midpoint")


@pytest.mark.parametrize("name", NAMES)
def test_set_timesteps_argument_errors(name):
    s = make(name)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(1001)
    with pytest.raises(ValueError, match="exactly one"):
        s.set_timesteps()
    with pytest.raises(ValueError, match="exactly one"):
        s.set_timesteps(10, sigmas=[3.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="begin_index"):
        s.set_timesteps(10)
        s.set_begin_index(10)


@pytest.mark.parametrize("name", NAMES)
def test_step_argument_errors(name):
    s = make(name)
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999, x)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="shape"):
        s.step(torch.zeros(1, 3, 4, 4), s.timesteps[0], x)
    with pytest.raises(TypeError, match="sample"):
        s.step(x, s.timesteps[0], "x")
    for t in s.timesteps:
        x = s.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, s.timesteps[-1], x)  # one step too many


def test_sde_noise_from_generator_or_variance_noise():
    s = td.DPMSolverMultistepScheduler(**SD, algorithm_type="sde-dpmsolver++")
    a = loop(s, generator=torch.Generator().manual_seed(0))
    b = loop(s, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    s.set_timesteps(4)
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="variance_noise"):
        s.step(x, s.timesteps[0], x, variance_noise=torch.zeros(1, 1, 4, 4))


def test_unipc_solver_p_and_disable_corrector():
    p = td.DPMSolverMultistepScheduler(**SD)
    s = td.UniPCMultistepScheduler(**SD, solver_p=p)
    assert s.config.solver_p is None  # an object, not a config value (recorded as null, as Diffusers saves it)
    assert torch.isfinite(loop(s)).all()
    with_c = loop(td.UniPCMultistepScheduler(**SD))
    without = loop(td.UniPCMultistepScheduler(**SD, disable_corrector=list(range(8))))
    assert not torch.allclose(with_c, without)


def test_fp16_sample_keeps_dtype():
    s = td.DPMSolverMultistepScheduler(**SD)
    s.set_timesteps(4)
    x = torch.randn(1, 2, 4, 4).half()
    for t in s.timesteps:
        x = s.step(0.2 * x, t, x).prev_sample
    assert x.dtype == torch.float16 and torch.isfinite(x).all()


def test_two_threads_share_one_pipeline():
    """A pipeline copies its scheduler per call: concurrent calls equal sequential ones."""
    unet = td.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 8),
                          norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip
    pipe = td.DDPMPipeline(unet=unet.eval(), scheduler=td.UniPCMultistepScheduler(solver_order=3))
    pipe.set_progress_bar_config(disable=True)

    def call(seed):
        g = torch.Generator().manual_seed(seed)
        return pipe(batch_size=1, generator=g, num_inference_steps=5, output_type="pt").images

    alone = [call(s) for s in (1, 2)]
    out = [None, None]

    def work(i, seed):
        out[i] = call(seed)

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate((1, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(out[0], alone[0]) and torch.equal(out[1], alone[1])


@pytest.mark.parametrize("name", NAMES)
def test_as_many_steps_as_training_steps(name):
    """20 of 20 steps repeats a timestep on linspace grids; the repeated level is skipped, not a singular solve."""
    s = getattr(td, name)(num_train_timesteps=20, solver_order=3)
    assert torch.isfinite(loop(s, steps=20)).all()


def test_swap_from_ddpm_config_keeps_fixed_variance_types():
    s = td.DPMSolverMultistepScheduler.from_config(td.DDPMScheduler().config)
    assert s.config.variance_type in (None, "fixed_small") and torch.isfinite(loop(s)).all()
