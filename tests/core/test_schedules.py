import math

import numpy as np
import pytest
import torch

from torchdiffusion.core.schedules import (
    BETA_SCHEDULES,
    TrainedSchedule,
    betas_for_alpha_bar,
    make_betas,
    rescale_zero_terminal_snr,
)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_every_schedule_is_float64_and_valid(schedule):
    betas = make_betas(1000, 0.0001, 0.02, schedule)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert (betas > 0).all() and (betas < 1).all()
    ab = TrainedSchedule(betas).alphas_cumprod64
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
    assert TrainedSchedule.from_alphas_cumprod(ab).sigmas().tolist() == pytest.approx([1.0, 2.0])


def test_float32_views():
    s = TrainedSchedule(make_betas(1000))
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


def test_trained_schedule_forward_process_matches_the_formulas():
    ts = TrainedSchedule(make_betas(1000, 0.00085, 0.012, "scaled_linear"))
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    ab = ts.alphas_cumprod64[t]
    a, s = ab.sqrt().float().view(-1, 1, 1, 1), (1 - ab).sqrt().float().view(-1, 1, 1, 1)
    assert torch.equal(ts.add_noise(x0, noise, t), a * x0 + s * noise)
    assert torch.equal(ts.velocity(x0, noise, t), a * noise - s * x0)
    assert torch.equal(ts.snr(t), (ab / (1 - ab)).float())
    alpha, sigma = ts.coefficients(t)
    assert alpha.dtype == torch.float32 and torch.equal(alpha, a.flatten()) and torch.equal(sigma, s.flatten())
    assert torch.equal(ts.add_noise(x0, noise, 7), ts.add_noise(x0, noise, torch.full((3,), 7)))


def test_trained_schedule_sigmas_dtypes_and_zero_snr_floor():
    ts = TrainedSchedule(make_betas(1000, rescale_betas_zero_snr=True))
    assert ts.alphas_cumprod[-1] == 0  # zero terminal SNR
    for dtype in (torch.float64, torch.float32):
        sig = ts.sigmas(dtype)
        assert sig.dtype == dtype and torch.isfinite(sig).all() and (sig[:-1].diff() > 0).all()
        assert sig[-1].item() == pytest.approx(2.0**12, rel=1e-6)  # sqrt((1 - floor) / floor), as Diffusers
        assert ts.floored_alphas_cumprod(dtype)[-1] == 2.0**-24
    assert ts.sigmas(torch.float64)[0].item() == pytest.approx(((1 - ts.alpha_bar(0)) / ts.alpha_bar(0)) ** 0.5)


def test_trained_schedule_from_alphas_cumprod_keeps_the_table():
    built = TrainedSchedule(make_betas(1000))
    again = TrainedSchedule.from_alphas_cumprod(built.alphas_cumprod)
    assert torch.equal(again.alphas_cumprod64, built.alphas_cumprod64) and len(again) == 1000
    assert torch.equal(again.sigmas(), built.sigmas())
    with pytest.raises(ValueError, match="alphas_cumprod"):
        TrainedSchedule.from_alphas_cumprod(torch.ones(2, 2))


def test_trained_schedule_is_frozen():
    ts = TrainedSchedule(make_betas(10))
    with pytest.raises(AttributeError):
        ts.betas64 = torch.zeros(10)


@pytest.mark.parametrize("t, err", [([0.5], ValueError), ([1000], ValueError), ([-1], ValueError), ([True], TypeError)])
def test_trained_schedule_rejects_bad_timesteps(t, err):
    with pytest.raises(err, match="timesteps"):
        TrainedSchedule(make_betas(1000)).coefficients(torch.tensor(t))


def test_trained_schedule_batch_and_type_checks_name_the_argument():
    ts = TrainedSchedule(make_betas(1000))
    with pytest.raises(ValueError, match="timesteps"):
        ts.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="x0"):
        ts.velocity([0.0], torch.zeros(1), 1)
