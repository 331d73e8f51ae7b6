import pytest
import torch

from torchdiffusion import KDPM2DiscreteScheduler

from .helpers import run, start


def test_layout_and_run():
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(5)
    assert s.order == 2 and len(s.timesteps) == 9 and len(s.sigmas) == 12
    assert torch.isfinite(run(s, start(s))).all() and s.state_in_first_order


def test_karras_on_cosine_is_finite():
    # Diffusers repeats t=999 at the start of this grid, skips a step and returns NaN
    s = KDPM2DiscreteScheduler(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True)
    s.set_timesteps(10)
    assert s.timesteps[0] == s.timesteps[2] == 999
    x = run(s, start(s))
    assert torch.isfinite(x).all() and s.step_index == len(s.timesteps)


def test_sample_prediction_works():
    s = KDPM2DiscreteScheduler(prediction_type="sample")  # NotImplementedError in Diffusers
    s.set_timesteps(3)
    assert torch.isfinite(run(s, start(s))).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="prediction_type"):
        KDPM2DiscreteScheduler(prediction_type="flow")
    with pytest.raises(ValueError, match="num_inference_steps"):
        KDPM2DiscreteScheduler().set_timesteps(-2)
