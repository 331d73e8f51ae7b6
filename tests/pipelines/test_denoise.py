import pytest
import torch

from torchdiffusion.core.guidance import classifier_free_guidance, rescale_guidance
from torchdiffusion.pipelines.denoise import (
    check_finite_number,
    check_positive_int,
    denoise,
    fresh_scheduler,
    set_timesteps,
    step_kwargs,
)


class FakeScheduler:
    def __init__(self):
        self.timesteps = None

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        self.timesteps = torch.tensor(timesteps) if timesteps is not None else torch.arange(num_inference_steps).flip(0)

    def scale_model_input(self, x, t):
        return x

    def step(self, model_output, t, x, generator=None, return_dict=True):
        return (x - 0.1 * model_output,)


class FakePipe:
    def progress_bar(self, total):
        from tqdm.auto import tqdm

        return tqdm(total=total, disable=True)


def test_denoise_runs_steps_and_callbacks():
    sched = FakeScheduler()
    set_timesteps(sched, 4)
    seen = []

    def predict(x, t, state):
        return torch.ones_like(x) * state["scale"]

    def callback(pipe, i, t, tensors):
        seen.append((i, int(t)))
        return {"latents": tensors["latents"] * 0 + 5.0} if i == 1 else {}

    out = denoise(FakePipe(), sched, torch.zeros(1, 2), predict, state={"scale": torch.tensor(1.0)},
                  callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])
    assert seen == [(0, 3), (1, 2), (2, 1), (3, 0)]
    torch.testing.assert_close(out, torch.full((1, 2), 5.0 - 0.2))


def test_denoise_rejects_unknown_callback_inputs():
    sched = FakeScheduler()
    set_timesteps(sched, 2)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        denoise(FakePipe(), sched, torch.zeros(1), lambda x, t, s: x, callback_on_step_end=lambda *a: {},
                callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_helpers():
    sched = FakeScheduler()
    assert step_kwargs(sched, generator=1, eta=0.5) == {"generator": 1}
    copy = fresh_scheduler(sched)
    assert copy is not sched
    assert list(set_timesteps(sched, timesteps=[5, 3])) == [5, 3]
    with pytest.raises(ValueError, match="sigmas"):
        set_timesteps(sched, sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="timesteps or sigmas"):
        set_timesteps(sched, timesteps=[1], sigmas=[1.0])
    with pytest.raises(ValueError, match="num_inference_steps"):
        set_timesteps(sched, 0)
    with pytest.raises(TypeError, match="steps"):
        check_positive_int(2.0, "steps")
    with pytest.raises(ValueError, match="scale"):
        check_finite_number(float("nan"), "scale")
    with pytest.raises(ValueError, match="strength"):
        check_finite_number(1.5, "strength", 0.0, 1.0)
    with pytest.raises(TypeError, match="strength"):
        check_finite_number("1", "strength")


def test_guidance_math():
    u, c = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(classifier_free_guidance(u, c, 1.0), c)
    torch.testing.assert_close(classifier_free_guidance(u, c, 7.5), torch.full((2, 3), 7.5))
    g = torch.randn(2, 4) * 3
    cond = torch.randn(2, 4)
    assert torch.equal(rescale_guidance(g, cond, 0.0), g)
    full = rescale_guidance(g, cond, 1.0)
    torch.testing.assert_close(full.std(dim=1), cond.std(dim=1))


def test_fresh_scheduler_copies_a_diffusers_scheduler():
    # Diffusers' ConfigMixin.__getattr__ raises KeyError (not AttributeError) for "copy": a pipeline of ours
    # given a Diffusers scheduler must still get its per-call copy.
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DPMSolverMultistepScheduler()
    theirs.set_timesteps(5)
    copy = fresh_scheduler(theirs)
    assert copy is not theirs and type(copy) is type(theirs)
    assert torch.equal(copy.timesteps, theirs.timesteps)
