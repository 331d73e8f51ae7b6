import pytest
import torch

from torchdiffusion import FlowMatchEulerDiscreteScheduler
from torchdiffusion.core.grids import calculate_shift

from .helpers import run, start


def test_shift_and_run():
    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(8)
    assert s.sigmas[0] == 1 and s.sigmas[-1] == 0 and len(s.timesteps) == 8
    torch.testing.assert_close(s.timesteps, s.sigmas[:-1] * 1000)
    assert torch.isfinite(run(s, start(s))).all()


def test_dynamic_shifting_needs_mu():
    s = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="mu"):
        s.set_timesteps(4)
    s.set_timesteps(4, mu=calculate_shift(4096))
    assert s.sigmas[1] > 0.75


def test_add_noise_and_velocity():
    s = FlowMatchEulerDiscreteScheduler()
    s.set_timesteps(4)
    x0, noise = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    out = s.add_noise(x0, noise, s.timesteps[1:2])
    assert out[0, 0, 0, 0].item() == pytest.approx(float(s.sigmas[1]))
    torch.testing.assert_close(s.get_velocity(x0, noise), noise - x0)


def test_stochastic_reproducible():
    s = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    s.set_timesteps(4)
    a = run(s, start(s), generator=torch.Generator().manual_seed(2))
    s.set_timesteps(4)
    assert torch.equal(a, run(s, start(s), generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(sigmas=[1.0, 1.5]), "sigmas"),
        (dict(num_inference_steps=3, sigmas=[1.0, 0.5]), "sigmas"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(), "num_inference_steps"),
    ],
)
def test_bad_set_timesteps(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FlowMatchEulerDiscreteScheduler().set_timesteps(**kwargs)


def test_bad_constructor_and_step():
    with pytest.raises(ValueError, match="shift"):
        FlowMatchEulerDiscreteScheduler(shift=0)
    with pytest.raises(ValueError, match="time_shift_type"):
        FlowMatchEulerDiscreteScheduler(time_shift_type="cubic")
    s = FlowMatchEulerDiscreteScheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, s.timesteps[0], x)
