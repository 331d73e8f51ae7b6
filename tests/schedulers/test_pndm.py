import pytest
import torch

from torchdiffusion import PNDMScheduler

from .helpers import fake_model

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)


def exact_v_run(s, x0):
    """Sample with the exact v of a one-point data set: any consistent sampler must land on x0."""
    x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    ac = s.alphas_cumprod.double()
    for t in s.timesteps:
        a, sig = ac[t].sqrt().float(), (1 - ac[t]).sqrt().float()
        eps = (x - a * x0) / sig
        x = s.step(a * eps - sig * x0, t, x).prev_sample
    return x


@pytest.mark.parametrize("skip", [False, True])
def test_v_prediction_is_exact_on_a_known_model(skip):
    # Diffusers combines v outputs of different timesteps before converting them: error ~1e-2 here
    x0 = torch.rand(1, 2, 4, 4) * 2 - 1
    s = PNDMScheduler(**SD, prediction_type="v_prediction", skip_prk_steps=skip, set_alpha_to_one=True)
    s.set_timesteps(20)
    assert (exact_v_run(s, x0) - x0).abs().max() < 1e-4


def test_layouts():
    s = PNDMScheduler(**SD)
    s.set_timesteps(10)
    assert len(s.prk_timesteps) == 12 and len(s.timesteps) == 12 + 7
    s = PNDMScheduler(**SD, skip_prk_steps=True)
    s.set_timesteps(10)
    assert s.timesteps.tolist()[:3] == [901, 801, 801] and len(s.timesteps) == 11


def test_sample_prediction_runs():
    s = PNDMScheduler(prediction_type="sample", skip_prk_steps=True)
    s.set_timesteps(5)
    x = torch.randn(1, 1, 4, 4)
    for t in s.timesteps:
        x = s.step(fake_model(x, t), t, x).prev_sample
    assert torch.isfinite(x).all()


def test_bad_arguments():
    s = PNDMScheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(3)  # Diffusers: "operands could not be broadcast together"
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="steps_offset"):
        PNDMScheduler(steps_offset=1).set_timesteps(1000)
