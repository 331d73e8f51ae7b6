import copy
import json

import pytest
import torch

from torchdiffusion import DDIMScheduler, DDPMScheduler, SchedulerMixin


def fake_model(x, t):
    return torch.sin(1.3 * x + float(t) / 300.0) * 0.7 + 0.1 * x


def run(s, x, generator=None):
    for t in s.timesteps:
        x = s.step(fake_model(x, t), t, x, generator=generator).prev_sample
    return x


def test_defaults_and_attributes():
    s = DDPMScheduler()
    assert isinstance(s, SchedulerMixin) and s.order == 1 and s.init_noise_sigma == 1.0
    assert s.timesteps.tolist() == list(range(999, -1, -1)) and s.num_inference_steps is None
    assert s.alphas_cumprod.dtype == torch.float32 and len(s) == 1000
    assert s.config.variance_type == "fixed_small" and s.config.clip_sample is True
    assert DDIMScheduler in [c for c in s.compatibles] and DDPMScheduler in s.compatibles


def test_set_timesteps_and_previous_timestep():
    s = DDPMScheduler(steps_offset=1)
    s.set_timesteps(10)
    assert s.timesteps.tolist() == list(range(901, 0, -100)) and s.timesteps.dtype == torch.int64
    assert s.previous_timestep(901) == 801 and s.previous_timestep(1) == -1
    assert s.previous_timestep(torch.tensor(901)).item() == 801
    s.set_timesteps(timesteps=[700, 300, 5])
    assert s.custom_timesteps and s.num_inference_steps == 3 and s.previous_timestep(300) == 5


def test_full_chain_without_set_timesteps():
    s = DDPMScheduler(num_train_timesteps=20)
    out = run(s, torch.randn(1, 2, 4, 4), torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


def test_generator_reproducible_and_list_per_sample():
    s = DDPMScheduler()
    s.set_timesteps(5)
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    a = run(s, x, torch.Generator().manual_seed(1))
    b = run(s, x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    gens = [torch.Generator().manual_seed(i) for i in (7, 8)]
    batch = run(s, x, gens)
    alone = run(s, x[1:], [torch.Generator().manual_seed(8)])
    torch.testing.assert_close(batch[1:], alone)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"])
def test_variance_types_finite(variance_type):
    s = DDPMScheduler(variance_type=variance_type)
    s.set_timesteps(10)
    assert torch.isfinite(run(s, torch.randn(1, 1, 4, 4), torch.Generator().manual_seed(0))).all()


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_learned_variance(variance_type):
    s = DDPMScheduler(variance_type=variance_type)
    s.set_timesteps(4)
    x = torch.randn(1, 2, 4, 4)
    for t in s.timesteps:
        out = torch.cat([fake_model(x, t), torch.rand_like(x) * 2 - 1], dim=1)
        x = s.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert x.shape == (1, 2, 4, 4) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="variance_type"):
        s.step(torch.zeros(1, 2, 4, 4), s.timesteps[0], torch.zeros(1, 2, 4, 4))


def test_step_output_tuple_and_dtype():
    s = DDPMScheduler()
    s.set_timesteps(3)
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    prev, x0 = s.step(fake_model(x, 999), s.timesteps[0], x, return_dict=False)
    assert prev.dtype == torch.float64 and x0.shape == x.shape
    out = s.step(fake_model(x, 999), int(s.timesteps[0]), x)
    assert out[0].shape == x.shape and out.pred_original_sample is not None


def test_zero_snr_epsilon_stays_finite():
    # Diffusers divides by sqrt(alpha_bar_T) = 0 here and returns inf/NaN
    s = DDPMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)
    s.set_timesteps(5)
    assert torch.isfinite(run(s, torch.randn(1, 1, 4, 4), torch.Generator().manual_seed(0))).all()


def test_add_noise_and_velocity():
    s = DDPMScheduler()
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    xt = s.add_noise(x0, noise, t)
    ab = s.alphas_cumprod[t].view(3, 1, 1, 1)
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    v = s.get_velocity(x0, noise, t)
    torch.testing.assert_close(v, ab.sqrt() * noise - (1 - ab).sqrt() * x0)
    assert s.add_noise(x0.half(), noise.half(), t).dtype == torch.float16
    torch.testing.assert_close(s.add_noise(x0, noise, 500), s.add_noise(x0, noise, torch.tensor([500] * 3)))
    with pytest.raises(ValueError, match="timesteps"):
        s.add_noise(x0, noise, torch.tensor([1000, 0, 0]))
    with pytest.raises(ValueError, match="timesteps"):
        s.add_noise(x0, noise, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="noise"):
        s.add_noise(x0, noise[:1], t)


def test_config_round_trip(tmp_path):
    s = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", steps_offset=1, variance_type="fixed_large"
    )
    s.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert data["_class_name"] == "DDPMScheduler" and data["prediction_type"] == "v_prediction"
    t = DDPMScheduler.from_pretrained(tmp_path, timestep_spacing="trailing")
    assert t.config.beta_schedule == "squaredcos_cap_v2" and t.config.timestep_spacing == "trailing"
    d = DDIMScheduler.from_config(s.config)
    back = DDPMScheduler.from_config(d.config)
    assert d.config.prediction_type == "v_prediction" and d.config.steps_offset == 1
    assert back.config.variance_type == "fixed_large" and back.variance_type == "fixed_large"


def test_copy_is_independent():
    s = DDPMScheduler()
    s.set_timesteps(10)
    c = s.copy()
    c.set_timesteps(4)
    assert len(s.timesteps) == 10 and len(c.timesteps) == 4 and s.previous_timestep(900) == 800
    d = copy.deepcopy(s)
    assert torch.equal(d.timesteps, s.timesteps) and d.config == s.config


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(beta_schedule="cosine"), "beta_schedule"),
        (dict(prediction_type="noise"), "prediction_type"),
        (dict(variance_type="small"), "variance_type"),
        (dict(timestep_spacing="uniform"), "timestep_spacing"),
        (dict(steps_offset=-1), "steps_offset"),
        (dict(dynamic_thresholding_ratio=1.5), "dynamic_thresholding_ratio"),
        (dict(clip_sample_range=0), "clip_sample_range"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DDPMScheduler(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name, error",
    [
        (dict(num_inference_steps=0), "num_inference_steps", ValueError),
        (dict(num_inference_steps=-5), "num_inference_steps", ValueError),
        (dict(num_inference_steps=1001), "num_inference_steps", ValueError),
        (dict(num_inference_steps=2.5), "num_inference_steps", TypeError),
        (dict(), "num_inference_steps", ValueError),
        (dict(num_inference_steps=5, timesteps=[3, 1]), "timesteps", ValueError),
        (dict(timesteps=[1, 3]), "timesteps", ValueError),
        (dict(timesteps=[1000, 3]), "timesteps", ValueError),
    ],
)
def test_bad_set_timesteps(kwargs, name, error):
    with pytest.raises(error, match=name):
        DDPMScheduler().set_timesteps(**kwargs)


def test_steps_offset_past_the_end():
    # Diffusers builds timestep 1000 here and fails later with an IndexError
    with pytest.raises(ValueError, match="steps_offset"):
        DDPMScheduler(steps_offset=1).set_timesteps(1000)


def test_bad_step_arguments():
    s = DDPMScheduler()
    s.set_timesteps(10)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="timestep"):
        s.step(x, 901, x)  # not on the grid
    with pytest.raises(ValueError, match="timestep"):
        s.step(x, torch.tensor([900, 800]), x)
    with pytest.raises(TypeError, match="timestep"):
        s.step(x, "900", x)
    with pytest.raises(ValueError, match="model_output"):
        s.step(torch.zeros(1, 2, 2, 2), 900, x)
    with pytest.raises(TypeError, match="generator"):
        s.step(x, 900, x, generator=3)
