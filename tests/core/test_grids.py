import numpy as np
import pytest
import torch

from torchdiffusion.core.grids import (
    beta_sigmas,
    check_custom_sigmas,
    check_custom_timesteps,
    check_num_inference_steps,
    exponential_sigmas,
    karras_sigmas,
    sigma_grid_kind,
    sigma_to_t,
    timestep_grid,
)


def test_grids():
    assert timestep_grid(10, 1000, "leading").tolist() == list(range(900, -1, -100))
    assert timestep_grid(10, 1000, "leading", 1).tolist() == list(range(901, 0, -100))
    assert timestep_grid(10, 1000, "trailing").tolist() == list(range(999, 0, -100))
    lin = timestep_grid(4, 1000, "linspace")
    assert lin.tolist() == pytest.approx([999, 666, 333, 0])
    assert timestep_grid(3, 1000, "linspace")[1] == 499.5  # not rounded here


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_num_inference_steps(bad):
    with pytest.raises(ValueError, match="num_inference_steps"):
        timestep_grid(bad, 1000)


@pytest.mark.parametrize("bad", [2.5, "10", None, True])
def test_num_inference_steps_type(bad):
    with pytest.raises(TypeError, match="num_inference_steps"):
        check_num_inference_steps(bad)


def test_too_many_steps():
    with pytest.raises(ValueError, match="num_inference_steps"):
        timestep_grid(1001, 1000)
    assert check_num_inference_steps(torch.tensor(5)) == 5


def test_unknown_spacing():
    with pytest.raises(ValueError, match="timestep_spacing.*linspace"):
        timestep_grid(10, 1000, "random")


@pytest.mark.parametrize("timesteps", [[], [1, 5], [5, 5, 1], [1000, 3], [5, -1], [[5, 3]], [5.5, 1.0]])
def test_bad_custom_timesteps(timesteps):
    with pytest.raises(ValueError, match="timesteps"):
        check_custom_timesteps(timesteps, 1000)


def test_custom_timesteps_ok():
    assert check_custom_timesteps(torch.tensor([999, 500, 0]), 1000).dtype == np.int64
    assert check_custom_timesteps([9.0, 3.0], 1000).tolist() == [9, 3]


@pytest.mark.parametrize("sigmas", [[1.0], [1.0, 2.0], [1.0, -0.1], [float("inf"), 0.0]])
def test_bad_custom_sigmas(sigmas):
    with pytest.raises(ValueError, match="sigmas"):
        check_custom_sigmas(sigmas)


@pytest.mark.parametrize("fn", [karras_sigmas, exponential_sigmas, beta_sigmas])
def test_sigma_grids_span_the_range(fn):
    s = fn(0.03, 14.6, 8)
    assert s.shape == (8,) and s[0] == pytest.approx(14.6) and s[-1] == pytest.approx(0.03)
    assert (np.diff(s) < 0).all()


def test_sigma_grid_kind():
    assert sigma_grid_kind({"use_karras_sigmas": True}) == "karras"
    assert sigma_grid_kind({}) is None
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        sigma_grid_kind({"use_karras_sigmas": True, "use_beta_sigmas": True})


def test_sigma_to_t_inverts_the_table():
    log_sigmas = np.log(np.linspace(0.1, 10, 50))
    t = sigma_to_t(np.exp(log_sigmas[[3, 17]]), log_sigmas)
    assert t.tolist() == pytest.approx([3, 17])
    assert sigma_to_t(np.array([100.0, 1e-5]), log_sigmas).tolist() == pytest.approx([49, 0])


def test_custom_sigmas_may_repeat_a_level():
    """The one rule (module docstring): non-increasing, so the repeated levels of Diffusers' own grids pass."""
    assert check_custom_sigmas([14.6, 3.0, 3.0, 0.03, 0.03]).tolist() == [14.6, 3.0, 3.0, 0.03, 0.03]
    assert check_custom_sigmas(torch.tensor([1.0, 0.0])).dtype == np.float64
