import pytest
import torch

from torchdiffusion import EDMEulerScheduler

from .helpers import run, start


def test_grid_and_preconditioning():
    s = EDMEulerScheduler()
    s.set_timesteps(10)
    assert float(s.sigmas[0]) == pytest.approx(80.0) and s.sigmas[-1] == 0
    torch.testing.assert_close(s.timesteps, 0.25 * s.sigmas[:-1].log())
    assert s.init_noise_sigma == pytest.approx((80.0**2 + 1) ** 0.5)
    x = torch.ones(1, 1, 2, 2)
    assert s.precondition_inputs(x, 0.5)[0, 0, 0, 0].item() == pytest.approx(1 / (0.5**2 + 0.5**2) ** 0.5)
    assert torch.isfinite(run(s, start(s))).all()


def test_custom_sigmas_are_noise_levels():
    s = EDMEulerScheduler()
    s.set_timesteps(sigmas=[40.0, 5.0, 0.5])
    assert s.sigmas.tolist() == pytest.approx([40.0, 5.0, 0.5, 0.0])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(sigma_schedule="linear"), "sigma_schedule"),
        (dict(prediction_type="sample"), "prediction_type"),
        (dict(sigma_min=5.0, sigma_max=1.0), "sigma_min"),
        (dict(final_sigmas_type="max"), "final_sigmas_type"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EDMEulerScheduler(**kwargs)


def test_bad_set_timesteps():
    s = EDMEulerScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps()
    with pytest.raises(ValueError, match="sigmas"):
        s.set_timesteps(sigmas=[1.0, 5.0])
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
