import pytest
import torch

from torchdiffusion import DDIMScheduler, DDPMScheduler


def fake_model(x, t):
    return torch.sin(1.3 * x + float(t) / 300.0) * 0.7 + 0.1 * x


def run(s, x, **kw):
    for t in s.timesteps:
        x = s.step(fake_model(x, t), t, x, **kw).prev_sample
    return x


def test_defaults():
    s = DDIMScheduler()
    assert s.order == 1 and s.init_noise_sigma == 1.0 and s.config.set_alpha_to_one is True
    assert s.final_alpha_cumprod.item() == 1.0 and s.num_inference_steps is None
    assert DDPMScheduler in s.compatibles


def test_deterministic_and_eta_noise():
    s = DDIMScheduler()
    s.set_timesteps(8)
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(run(s, x), run(s, x))
    a = run(s, x, eta=1.0, generator=torch.Generator().manual_seed(1))
    b = run(s, x, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, run(s, x))


def test_variance_noise_replaces_generator():
    s = DDIMScheduler()
    s.set_timesteps(4)
    x = torch.randn(1, 1, 4, 4)
    t = s.timesteps[1]
    z = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    a = s.step(fake_model(x, t), t, x, eta=0.5, variance_noise=z).prev_sample
    b = s.step(fake_model(x, t), t, x, eta=0.5, generator=torch.Generator().manual_seed(5)).prev_sample
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="generator"):
        s.step(x, t, x, eta=0.5, variance_noise=z, generator=torch.Generator())


def test_eta_above_one_stays_finite():
    s = DDIMScheduler()
    s.set_timesteps(5)
    assert torch.isfinite(run(s, torch.randn(1, 1, 4, 4), eta=3.0, generator=torch.Generator())).all()


def test_clipped_model_output_and_set_alpha_to_one():
    x = torch.randn(1, 1, 4, 4) * 3
    s = DDIMScheduler(set_alpha_to_one=False)
    s.set_timesteps(5)
    a = run(s, x, use_clipped_model_output=True)
    assert torch.isfinite(a).all() and not torch.equal(a, run(s, x))


def test_custom_timesteps_walk_the_grid():
    s = DDIMScheduler(clip_sample=False)
    s.set_timesteps(timesteps=[999, 600, 250, 0])
    assert s.timesteps.tolist() == [999, 600, 250, 0] and s.num_inference_steps == 4
    assert torch.isfinite(run(s, torch.randn(1, 1, 4, 4))).all()


def test_off_grid_timestep_uses_fixed_stride():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = torch.randn(1, 1, 2, 2)
    assert torch.isfinite(s.step(fake_model(x, 950), 950, x).prev_sample).all()


def test_zero_snr_v_and_epsilon():
    for pt in ("v_prediction", "epsilon"):
        s = DDIMScheduler(
            rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type=pt, clip_sample=False
        )
        s.set_timesteps(5)
        assert s.alphas_cumprod[-1] == 0
        assert torch.isfinite(run(s, torch.randn(1, 1, 4, 4))).all()


def test_thresholding_bounds_x0():
    s = DDIMScheduler(thresholding=True, sample_max_value=2.0)
    s.set_timesteps(4)
    x = torch.randn(2, 1, 8, 8) * 10
    out = s.step(x * 5, s.timesteps[0], x)
    assert out.pred_original_sample.abs().max() <= 1.0 + 1e-6


def test_add_noise():
    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([10, 900])
    ab = s.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(s.add_noise(x0, noise, t), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)


def test_config_round_trip(tmp_path):
    s = DDIMScheduler(beta_schedule="scaled_linear", set_alpha_to_one=False, timestep_spacing="trailing")
    s.save_pretrained(tmp_path)
    t = DDIMScheduler.from_pretrained(tmp_path)
    assert t.config.set_alpha_to_one is False and t._final_ab == s._final_ab
    assert t.config.timestep_spacing == "trailing" and t.config.beta_schedule == "scaled_linear"
    ddpm = DDPMScheduler.from_config(t.config)
    assert DDIMScheduler.from_config(ddpm.config).config.set_alpha_to_one is False


def test_step_before_set_timesteps():
    s = DDIMScheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999, x)


@pytest.mark.parametrize(
    "kwargs, name, error",
    [
        (dict(num_inference_steps=0), "num_inference_steps", ValueError),
        (dict(num_inference_steps=-1), "num_inference_steps", ValueError),
        (dict(num_inference_steps=2000), "num_inference_steps", ValueError),
        (dict(num_inference_steps="10"), "num_inference_steps", TypeError),
        (dict(timesteps=[5, 7]), "timesteps", ValueError),
    ],
)
def test_bad_set_timesteps(kwargs, name, error):
    with pytest.raises(error, match=name):
        DDIMScheduler().set_timesteps(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(beta_schedule="cos"), "beta_schedule"),
        (dict(prediction_type="eps"), "prediction_type"),
        (dict(timestep_spacing="even"), "timestep_spacing"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DDIMScheduler(**kwargs)


def test_bad_step_arguments():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="eta"):
        s.step(x, 900, x, eta=-1.0)
    with pytest.raises(ValueError, match="timestep"):
        s.step(x, 1000, x)
    with pytest.raises(ValueError, match="variance_noise"):
        s.step(x, 900, x, eta=1.0, variance_noise=torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="model_output"):
        s.step(torch.zeros(1, 1, 3, 3), 900, x)
