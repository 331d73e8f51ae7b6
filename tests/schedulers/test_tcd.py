import pytest
import torch

from torchdiffusion import TCDScheduler

from .helpers import run, start


def test_run_eta_and_reproducibility():
    s = TCDScheduler()
    s.set_timesteps(4)
    a = run(s, start(s), eta=0.3, generator=torch.Generator().manual_seed(0))
    s.set_timesteps(4)
    b = run(s, start(s), eta=0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    s.set_timesteps(4)
    assert torch.isfinite(run(s, start(s), eta=0.0)).all()


def test_clip_sample_is_honoured():
    # Diffusers' TCD accepts clip_sample but never applies it
    s = TCDScheduler(clip_sample=True, clip_sample_range=0.5)
    s.set_timesteps(1)
    x = torch.full((1, 1, 2, 2), 5.0)
    out = s.step(torch.zeros_like(x), s.timesteps[0], x, eta=0.0)
    ab = float(s.alphas_cumprod[0])
    assert out.prev_sample.abs().max().item() == pytest.approx(ab**0.5 * 0.5, rel=1e-4)


def test_explicit_original_steps_use_every_timestep():
    s = TCDScheduler()
    s.set_timesteps(4, original_inference_steps=50)
    assert s.timesteps.tolist() == [999, 749, 499, 249]


def test_bad_eta():
    s = TCDScheduler()
    s.set_timesteps(2)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="eta"):
        s.step(x, s.timesteps[0], x, eta=1.5)  # an AssertionError in Diffusers
