import pytest
import torch

from torchdiffusion import LCMScheduler

from .helpers import run, start


def test_grid_and_run():
    s = LCMScheduler()
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [999, 759, 499, 259] and s.timesteps.dtype == torch.int64
    out = run(s, start(s), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and s.step_index == 4
    t = s.timesteps[0]
    s.set_timesteps(4)
    res = s.step(torch.zeros(1, 1, 2, 2), t, torch.ones(1, 1, 2, 2))
    assert res.denoised is not None and res[0].shape == (1, 1, 2, 2)


def test_zero_snr_is_finite():
    # Diffusers divides by sqrt(alpha_bar_999) = 0 and returns NaN
    s = LCMScheduler(rescale_betas_zero_snr=True)
    s.set_timesteps(4)
    assert torch.isfinite(run(s, start(s), generator=torch.Generator().manual_seed(0))).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=60), "num_inference_steps"),
        (dict(num_inference_steps=4, strength=0.0), "strength"),
        (dict(num_inference_steps=4, original_inference_steps=2000), "original_inference_steps"),
        (dict(timesteps=[5, 500]), "timesteps"),
        (dict(), "num_inference_steps"),
    ],
)
def test_bad_set_timesteps(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LCMScheduler().set_timesteps(**kwargs)


def test_step_before_set_timesteps():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        LCMScheduler().step(x, 999, x)
