import pytest
import torch

from torchdiffusion import KDPM2AncestralDiscreteScheduler

from .helpers import run, start


def test_reproducible_under_a_generator():
    s = KDPM2AncestralDiscreteScheduler()
    s.set_timesteps(5)
    a = run(s, start(s), generator=torch.Generator().manual_seed(0))
    s.set_timesteps(5)
    b = run(s, start(s), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and len(s.timesteps) == 9


@pytest.mark.parametrize("steps", [10, 25])
def test_cosine_schedule_is_finite(steps):
    # Diffusers computes sigma_down in float32 here: sqrt of a negative -> NaN timesteps and samples
    s = KDPM2AncestralDiscreteScheduler(beta_schedule="squaredcos_cap_v2")
    s.set_timesteps(steps)
    assert torch.isfinite(s.timesteps).all()
    assert torch.isfinite(run(s, start(s), generator=torch.Generator().manual_seed(0))).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="timestep_spacing"):
        KDPM2AncestralDiscreteScheduler(timestep_spacing="even")
