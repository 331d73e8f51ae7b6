import pytest
import torch

from torchdiffusion import DDIMScheduler, EulerDiscreteScheduler

from .helpers import fake_model, run, start

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)


def test_defaults_and_grid():
    s = EulerDiscreteScheduler(**SD)
    s.set_timesteps(10)
    assert s.timesteps.dtype == torch.float32 and len(s.timesteps) == 10 and len(s.sigmas) == 11
    assert s.sigmas[-1] == 0 and s.step_index is None and s.begin_index is None
    assert float(s.init_noise_sigma) == pytest.approx(float(s.sigmas.max()))
    lead = EulerDiscreteScheduler(**SD, timestep_spacing="leading")
    lead.set_timesteps(10)
    assert float(lead.init_noise_sigma) == pytest.approx(float((lead.sigmas.max() ** 2 + 1) ** 0.5))


def test_runs_and_counts_steps():
    s = EulerDiscreteScheduler(**SD, use_karras_sigmas=True)
    s.set_timesteps(6)
    x = run(s, start(s))
    assert torch.isfinite(x).all() and s.step_index == 6
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, s.timesteps[-1], x)  # past the end: a clear error, not an IndexError


def test_custom_sigmas_and_timesteps():
    s = EulerDiscreteScheduler(**SD)
    s.set_timesteps(sigmas=[10.0, 3.0, 1.0, 0.0])
    assert s.num_inference_steps == 3 and s.sigmas.tolist() == pytest.approx([10.0, 3.0, 1.0, 0.0])
    s.set_timesteps(timesteps=[900, 500, 100])
    assert s.timesteps.tolist() == [900, 500, 100] and s.sigmas[-1] == 0


def test_churn_reproducible():
    s = EulerDiscreteScheduler(**SD)
    s.set_timesteps(5)
    a = run(s, start(s), s_churn=1.0, generator=torch.Generator().manual_seed(1))
    s.set_timesteps(5)
    b = run(s, start(s), s_churn=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_begin_index_and_add_noise():
    s = EulerDiscreteScheduler(**SD)
    s.set_timesteps(10)
    s.set_begin_index(4)
    x0, noise = torch.ones(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    noisy = s.add_noise(x0, noise, s.timesteps[4:5])
    assert noisy[0, 0, 0, 0].item() == pytest.approx(1 + float(s.sigmas[4]))
    for t in s.timesteps[4:]:
        noisy = s.step(fake_model(s.scale_model_input(noisy, t), t), t, noisy).prev_sample
    assert s.step_index == 10


def test_copy_mid_run_is_independent():
    s = EulerDiscreteScheduler(**SD)
    s.set_timesteps(4)
    x = start(s)
    t0 = s.timesteps[0]
    x = s.step(fake_model(s.scale_model_input(x, t0), t0), t0, x).prev_sample
    c = s.copy()
    c.set_timesteps(8)
    assert s.step_index == 1 and len(s.timesteps) == 4


def test_swap_configs_round_trip(tmp_path):
    s = EulerDiscreteScheduler(**SD, use_karras_sigmas=True, prediction_type="v_prediction")
    d = DDIMScheduler.from_config(s.config)
    back = EulerDiscreteScheduler.from_config(d.config)
    assert back.config.use_karras_sigmas is True and d.config.prediction_type == "v_prediction"
    back.save_pretrained(tmp_path)
    assert EulerDiscreteScheduler.from_pretrained(tmp_path).config.use_karras_sigmas is True


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(interpolation_type="cubic"), "interpolation_type"),
        (dict(timestep_type="fractional"), "timestep_type"),
        (dict(final_sigmas_type="one"), "final_sigmas_type"),
        (dict(use_karras_sigmas=True, use_exponential_sigmas=True), "use_karras_sigmas"),
        (dict(prediction_type="flow"), "prediction_type"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EulerDiscreteScheduler(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(), "num_inference_steps"),
        (dict(num_inference_steps=5, sigmas=[1.0, 0.0]), "sigmas"),
        (dict(sigmas=[1.0, 2.0, 0.0]), "sigmas"),
        (dict(timesteps=[100, 500]), "timesteps"),
    ],
)
def test_bad_set_timesteps(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EulerDiscreteScheduler().set_timesteps(**kwargs)


def test_timesteps_with_karras_rejected():
    with pytest.raises(ValueError, match="timesteps"):
        EulerDiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 100])


def test_bad_step_arguments():
    s = EulerDiscreteScheduler()
    s.set_timesteps(5)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="timestep"):
        s.step(x, 3, x)  # an enumerate index, not a timestep
    with pytest.raises(ValueError, match="timestep"):
        s.step(x, 123.5, x)  # not on the grid
    with pytest.raises(ValueError, match="model_output"):
        s.step(torch.zeros(1, 2, 2, 2), s.timesteps[0], x)
    with pytest.raises(ValueError, match="begin_index"):
        s.set_begin_index(-1)
    with pytest.raises(ValueError, match="begin_index"):
        s.set_begin_index(5)
