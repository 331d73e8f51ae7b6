"""Helpers the scheduler adapters share: noise checks and draws, EDM config checks, sigma-grid installation,
churn, and the integer-grid ``set_timesteps`` / final ``alpha_bar`` of the alpha-bar schedulers."""

from __future__ import annotations

import pytest
import torch

import torchdiffusion as td
from torchdiffusion.schedulers.edm_euler import check_edm_config
from torchdiffusion.schedulers.scheduling_utils import check_noise, noise_like


def test_check_noise_names_the_argument():
    x = torch.zeros(2, 3, 4, 4)
    check_noise(torch.ones_like(x), x)
    with pytest.raises(ValueError, match="original_samples"):
        check_noise(torch.ones(2, 3, 4, 5), x)
    with pytest.raises(ValueError, match=r"sample \(2, 3, 4, 4\)"):
        check_noise([0.0], x, "sample")
    with pytest.raises(TypeError, match="original_samples"):
        td.DDPMScheduler().add_noise([0.0], x, 3)


def test_noise_like_shape_dtype_and_generator():
    x = torch.zeros(2, 3, 4, dtype=torch.float16)
    a = noise_like(x, torch.Generator().manual_seed(3))
    b = noise_like(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == torch.float16 and torch.equal(a, b)
    c = noise_like(x, torch.Generator().manual_seed(3), torch.float32)
    assert c.dtype == torch.float32 and c.std() > 0.5


@pytest.mark.parametrize("cls", [td.EDMEulerScheduler, td.EDMDPMSolverMultistepScheduler])
@pytest.mark.parametrize(
    "bad, key",
    [
        (dict(sigma_schedule="linear"), "sigma_schedule"),
        (dict(prediction_type="sample"), "prediction_type"),
        (dict(final_sigmas_type="max"), "final_sigmas_type"),
        (dict(sigma_min=0.0), "sigma_min"),
        (dict(sigma_min=90.0), "sigma_min"),
    ],
)
def test_edm_schedulers_share_config_checks(cls, bad, key):
    with pytest.raises(ValueError, match=key):
        cls(**bad)
    check_edm_config(cls().config)  # the defaults pass


@pytest.mark.parametrize("cls", [td.EulerDiscreteScheduler, td.EDMEulerScheduler, td.FlowMatchEulerDiscreteScheduler])
def test_sigma_grids_keep_float_levels_in_step(cls):
    s = cls()
    s.set_timesteps(5)
    assert len(s.timesteps) == 5 and len(s.sigmas) == 6
    assert s._sig == [float(v) for v in s.sigmas]
    assert s.step_index is None


def test_euler_churn_raises_the_noise_level_only_when_asked():
    s = td.EulerDiscreteScheduler()
    s.set_timesteps(10)
    x, out = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    same, sigma = s._churn(x, out, 2.0, (0.0, 0.0, float("inf"), 1.0), None)
    assert same is x and sigma == 2.0
    churned, sigma_hat = s._churn(x, out, 2.0, (10.0, 0.0, float("inf"), 1.0), torch.Generator().manual_seed(0))
    assert sigma_hat > 2.0 and churned.abs().sum() > 0


@pytest.mark.parametrize("cls", [td.DDIMScheduler, td.DDPMScheduler])
def test_alpha_bar_schedulers_share_set_timesteps(cls):
    s = cls(num_train_timesteps=100)
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [75, 50, 25, 0]
    s.set_timesteps(timesteps=[90, 10])
    assert s.timesteps.tolist() == [90, 10] and s.custom_timesteps
    with pytest.raises(ValueError, match="num_inference_steps or timesteps"):
        s.set_timesteps(4, timesteps=[90, 10])


@pytest.mark.parametrize("cls", [td.DDIMScheduler, td.PNDMScheduler, td.LCMScheduler, td.TCDScheduler])
def test_final_alpha_cumprod_follows_set_alpha_to_one(cls):
    one = cls(set_alpha_to_one=True)
    assert float(one.final_alpha_cumprod) == 1.0 and one._final_ab == 1.0
    first = cls(set_alpha_to_one=False)
    assert float(first.final_alpha_cumprod) == pytest.approx(float(first.alphas_cumprod[0]))
    assert first._final_ab < 1.0


def test_grid_step_checks_need_set_timesteps_and_valid_timesteps():
    s = td.DDIMScheduler(num_train_timesteps=100)
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 50, x)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="timestep=100"):
        s.step(x, 100, x)
