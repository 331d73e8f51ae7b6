import math

import numpy as np
import pytest
import torch

from torchdiffusion.core.schedules import (
    BETA_SCHEDULES,
    NoiseSchedule,
    betas_for_alpha_bar,
    make_betas,
    rescale_zero_terminal_snr,
    sigmas_from_alphas_cumprod,
)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_every_schedule_is_float64_and_valid(schedule):
    betas = make_betas(1000, 0.0001, 0.02, schedule)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert (betas > 0).all() and (betas < 1).all()
    ab = NoiseSchedule(betas).alphas_cumprod64
    assert (ab[1:] < ab[:-1]).all()


def test_linear_and_scaled_linear_endpoints():
    assert make_betas(10, 0.1, 0.2, "linear")[[0, -1]].tolist() == pytest.approx([0.1, 0.2])
    b = make_betas(10, 0.01, 0.04, "scaled_linear")
    assert b[[0, -1]].tolist() == pytest.approx([0.01, 0.04])
    assert b.sqrt().diff().std() < 1e-8  # linear in sqrt(beta) (up to float32 rounding)


def test_cosine_matches_its_definition():
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    b = betas_for_alpha_bar(50)
    assert b[3].item() == pytest.approx(1 - f(4 / 50) / f(3 / 50), rel=1e-12)
    assert b.max() <= 0.999


def test_zero_snr_rescale():
    b = rescale_zero_terminal_snr(make_betas(1000, 0.00085, 0.012, "scaled_linear"))
    ab = torch.cumprod(1 - b, 0)
    ab_orig = torch.cumprod(1 - make_betas(1000, 0.00085, 0.012, "scaled_linear"), 0)
    assert ab[-1] == 0 and ab[0].item() == pytest.approx(ab_orig[0].item(), rel=1e-12)
    assert make_betas(1000, rescale_betas_zero_snr=True)[-1] == 1


def test_trained_betas_win():
    b = make_betas(1000, beta_schedule="nonsense", trained_betas=[0.1, 0.2, 0.3])
    assert b.tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_sigmas():
    ab = torch.tensor([0.5, 0.2], dtype=torch.float64)
    assert sigmas_from_alphas_cumprod(ab).tolist() == pytest.approx([1.0, 2.0])


def test_float32_views():
    s = NoiseSchedule(make_betas(1000))
    assert s.alphas_cumprod.dtype == torch.float32 and s.alphas_cumprod64.dtype == torch.float64
    assert s.alpha_bar(-1) == 1.0 and s.alpha_bar(0) == pytest.approx(1 - 1e-4)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(beta_schedule="cosine"), "beta_schedule"),
        (dict(beta_schedule="linear", beta_end=1.5), "beta_end"),
        (dict(beta_schedule="linear", beta_start=-0.1), "beta_start"),
        (dict(trained_betas=[0.1, float("nan")]), "trained_betas"),
        (dict(trained_betas=[]), "trained_betas"),
        (dict(num_train_timesteps=0), "num_train_timesteps"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_betas(**kwargs)


def test_unknown_schedule_lists_allowed_values():
    with pytest.raises(ValueError, match="squaredcos_cap_v2"):
        make_betas(beta_schedule="cosine")


def test_num_train_timesteps_type():
    with pytest.raises(TypeError, match="num_train_timesteps"):
        make_betas(num_train_timesteps=10.5)
    assert np.isfinite(make_betas(3).numpy()).all()
