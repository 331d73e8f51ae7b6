import pytest
import torch

from torchdiffusion import HeunDiscreteScheduler

from .helpers import run, start


def test_layout_and_run():
    s = HeunDiscreteScheduler()
    assert s.order == 2 and s.num_inference_steps is None
    s.set_timesteps(5)
    assert len(s.timesteps) == 9 and len(s.sigmas) == 10 and s.state_in_first_order
    x = run(s, start(s))
    assert torch.isfinite(x).all() and s.state_in_first_order


def test_clip_sample_and_custom_sigmas():
    s = HeunDiscreteScheduler(clip_sample=True, use_karras_sigmas=True)
    s.set_timesteps(4)
    assert torch.isfinite(run(s, start(s))).all()
    s.set_timesteps(sigmas=[10.0, 2.0, 0.5, 0.0])
    assert s.num_inference_steps == 3 and len(s.timesteps) == 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_train_timesteps"):
        HeunDiscreteScheduler().set_timesteps(5, num_train_timesteps=500)
    with pytest.raises(ValueError, match="num_inference_steps"):
        HeunDiscreteScheduler().set_timesteps(0)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        HeunDiscreteScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
