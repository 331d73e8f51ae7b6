"""StableDiffusionImg2ImgPipeline and the image inputs it takes (PIL, numpy, tensors, lists, latents)."""

import numpy as np
import pytest
import torch
from PIL import Image

import torchdiffusion as td
from tests.sd_fixtures import tiny_sd_components
from torchdiffusion.pipelines.stable_diffusion.image_inputs import preprocess_image, preprocess_mask

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    parts = tiny_sd_components(td, tmp_path_factory.mktemp("tok"))
    p = td.StableDiffusionImg2ImgPipeline(**parts, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def picture(seed=0, size=(64, 64)):
    rng = np.random.RandomState(seed)
    return (rng.rand(size[1], size[0], 3) * 255).astype("uint8")


def run(pipe, image, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(kwargs.pop("prompt", "the cat"), image=image, **kwargs).images


def test_every_image_kind_gives_the_same_result(pipe):
    arr = picture()
    expected = run(pipe, Image.fromarray(arr))
    assert expected.shape == (1, 64, 64, 3)
    as_float = arr.astype("float32") / 255
    np.testing.assert_allclose(run(pipe, as_float), expected, atol=1e-5)
    np.testing.assert_allclose(run(pipe, torch.from_numpy(as_float).permute(2, 0, 1)), expected, atol=1e-5)
    np.testing.assert_allclose(run(pipe, [Image.fromarray(arr)]), expected, atol=1e-5)


def test_size_rounds_down_to_the_vae_factor_and_strength_matters(pipe):
    out = run(pipe, Image.fromarray(picture(size=(70, 45))))
    assert out.shape == (1, 40, 64, 3)
    weak, strong = run(pipe, picture(), strength=0.5), run(pipe, picture(), strength=1.0)
    assert np.abs(weak - strong).max() > 0


def test_latents_as_image_are_used_directly(pipe, monkeypatch):
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert run(pipe, latents).shape == (1, 64, 64, 3)

    def no_encode(*args, **kwargs):
        raise AssertionError("4-channel input must not go through the VAE encoder")

    monkeypatch.setattr(pipe.vae, "encode", no_encode)
    # one short step at the low-noise end: the result stays next to the given latents (not re-encoded or rescaled)
    def corr(a, b):
        return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()

    out = run(pipe, latents, output_type="latent", num_inference_steps=10, strength=0.1)
    assert out.shape == latents.shape
    assert corr(out, latents) > 0.8
    other = run(pipe, -latents, output_type="latent", num_inference_steps=10, strength=0.1)
    assert corr(other, -latents) > 0.8


def test_batch_invariant_with_generator_list(pipe):
    images = [Image.fromarray(picture(i)) for i in range(3)]
    batch = run(pipe, images, prompt=["a", "b", "c"], generator=[torch.Generator().manual_seed(i) for i in range(3)])
    for i in range(3):
        alone = run(pipe, images[i], prompt=["a", "b", "c"][i], seed=i)
        assert np.abs(alone[0] - batch[i]).max() <= 1e-4


def test_one_image_serves_every_prompt(pipe):
    out = run(pipe, Image.fromarray(picture()), prompt=["a", "b"], num_images_per_prompt=2)
    assert out.shape == (4, 64, 64, 3)
    assert all(np.abs(out[i] - out[j]).max() > 0.01 for i in range(4) for j in range(i))  # by prompt and by draw
    # and each is what that prompt alone makes from the image with the same generator list entry
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    batch = run(pipe, Image.fromarray(picture()), prompt=["a", "b"], num_images_per_prompt=2, generator=gens)
    gens = [torch.Generator().manual_seed(i) for i in (2, 3)]
    alone = run(pipe, Image.fromarray(picture()), prompt="b", num_images_per_prompt=2, generator=gens)
    assert np.abs(batch[2:] - alone).max() <= 1e-4


def test_preprocess_shapes_and_ranges():
    x = preprocess_image(Image.fromarray(picture()))
    assert x.shape == (1, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    gray = preprocess_image(np.zeros((16, 16), "float32"))
    assert gray.shape == (1, 3, 16, 16) and (gray == -1).all()
    with pytest.warns(FutureWarning, match="image"):
        assert preprocess_image(torch.full((1, 3, 8, 8), -0.5)).min() == -0.5
    mask = preprocess_mask(Image.fromarray(np.full((16, 24), 200, "uint8")))
    assert mask.shape == (1, 1, 16, 24) and (mask == 1).all()
    assert preprocess_mask(torch.zeros(2, 16, 16)).shape == (2, 1, 16, 16)
    assert preprocess_mask(np.zeros((16, 16, 3), "float32")).shape == (1, 1, 16, 16)


BAD = [
    (dict(strength=1.5), "strength"),
    (dict(strength=-0.1), "strength"),
    (dict(strength=0.0), "strength"),
    (dict(image=None), "image"),
    (dict(image="photo.png"), "image"),
    (dict(image=[Image.new("RGB", (64, 64)), Image.new("RGB", (32, 32))]), "image"),
    (dict(image=np.zeros((64, 64, 4), "float32")), "image"),
    (dict(generator=[torch.Generator()] * 2), "generator"),
    (dict(guidance_scale=float("inf")), "guidance_scale"),
    (dict(output_type="tensor"), "output_type"),
    (dict(prompt=None), "prompt"),
]


@pytest.mark.parametrize("kwargs,name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_arguments_name_the_argument(pipe, kwargs, name):
    kwargs = {"prompt": "the cat", "image": Image.fromarray(picture()), "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        pipe(**kwargs)


def test_strength_timesteps_and_expand_to_batch():
    from torchdiffusion.pipelines.denoise import check_latents, strength_timesteps
    from torchdiffusion.pipelines.stable_diffusion.image_inputs import expand_to_batch

    scheduler = td.EulerDiscreteScheduler()
    scheduler.set_timesteps(10)
    tail, begin = strength_timesteps(scheduler, 10, 0.35)  # int(3.5) = 3 steps kept
    assert tail.tolist() == scheduler.timesteps[7:].tolist() and begin == 7
    assert scheduler.begin_index is None  # the start is passed on explicitly, not left on the scheduler
    with pytest.raises(ValueError, match="strength"):
        strength_timesteps(scheduler, 10, 0.05)
    x = torch.arange(2.0).view(2, 1)
    assert expand_to_batch(x, 2, "image") is x
    assert expand_to_batch(x, 6, "image").flatten().tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="image"):
        expand_to_batch(x, 3, "image")
    z = torch.zeros(1, 4, 2, 2)
    assert check_latents(z, (1, 4, 2, 2), 8) is z
    with pytest.raises(ValueError, match="latents"):
        check_latents(z, (1, 4, 2, 3), 8)
    with pytest.raises(ValueError, match="latents"):
        check_latents([0.0], (1,), 8)


@pytest.mark.parametrize(
    "name, options",
    [
        ("EulerDiscreteScheduler", {}),
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
        ("HeunDiscreteScheduler", {}),  # order 2: repeated timesteps
        ("DPMSolverMultistepScheduler", {}),
        ("DDIMScheduler", {}),
    ],
)
def test_add_noise_at_the_begin_index_matches_diffusers(name, options):
    """Image-to-image noises the image to where the run starts; the numbers are Diffusers' (its pipeline sets the
    begin index on the scheduler, then calls add_noise with the first kept timestep)."""
    diffusers = pytest.importorskip("diffusers")
    from torchdiffusion.pipelines.denoise import add_noise_at, strength_timesteps

    ours = getattr(td, name)(**options)
    theirs = getattr(diffusers, name)(**options)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x0, noise = (
        torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
        torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)),
    )
    for strength in (0.35, 0.6, 1.0):
        tail, begin = strength_timesteps(ours, 10, strength)
        if hasattr(theirs, "set_begin_index"):
            theirs.set_begin_index(begin)
        expected = theirs.add_noise(x0, noise, theirs.timesteps[begin : begin + 1].repeat(3))
        got = add_noise_at(ours, x0, noise, begin)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert getattr(ours, "begin_index", begin) == begin  # the scheduler starts its steps there too
