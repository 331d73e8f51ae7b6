"""StableDiffusionInpaintPipeline with a 9-channel inpainting UNet and with a plain 4-channel one."""

import numpy as np
import pytest
import torch
from PIL import Image

import torchdiffusion as td
from tests.sd_fixtures import tiny_sd_components

pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=[4, 9], ids=["4ch", "9ch"])
def pipe(request, tmp_path_factory):
    parts = tiny_sd_components(td, tmp_path_factory.mktemp("tok"), unet_in_channels=request.param)
    p = td.StableDiffusionInpaintPipeline(**parts, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def picture(seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(64, 64, 3) * 255).astype("uint8"))


def hole():
    m = np.zeros((64, 64), "uint8")
    m[:, 32:] = 255
    return Image.fromarray(m)


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("image", picture())
    kwargs.setdefault("mask_image", hole())
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(kwargs.pop("prompt", "the cat"), **kwargs).images


def test_runs_for_every_strength_and_mask_kind(pipe):
    a = run(pipe)
    assert a.shape == (1, 64, 64, 3)
    mask_np = np.asarray(hole(), dtype="float32") / 255
    np.testing.assert_allclose(run(pipe, mask_image=mask_np), a, atol=1e-5)
    np.testing.assert_allclose(run(pipe, mask_image=torch.from_numpy(mask_np)[None]), a, atol=1e-5)
    assert run(pipe, strength=0.5).shape == (1, 64, 64, 3)
    assert run(pipe, height=32, width=48).shape == (1, 32, 48, 3)


def test_callback_sees_mask_and_masked_image_latents(pipe):
    seen = {}

    def callback(p, i, t, tensors):
        seen.update({k: v.shape for k, v in tensors.items()})
        return {}

    run(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["mask", "masked_image_latents"])
    assert seen == {"mask": (2, 1, 8, 8), "masked_image_latents": (2, 4, 8, 8)}


def test_batch_invariant_with_generator_list(pipe):
    batch = run(pipe, prompt=["a", "b"], generator=[torch.Generator().manual_seed(i) for i in range(2)])
    for i in range(2):
        assert np.abs(run(pipe, prompt=["a", "b"][i], seed=i)[0] - batch[i]).max() <= 1e-4


def test_plain_unet_keeps_the_unmasked_latents(pipe):
    if pipe.unet.config.in_channels != 4:
        pytest.skip("only the 4-channel path puts the known region back")
    latents = run(pipe, output_type="latent")
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(picture(), dtype="float32") / 127.5 - 1).permute(2, 0, 1)[None]
        known = pipe.vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(0)) * 0.18215
    torch.testing.assert_close(latents[..., :4], known[..., :4], atol=1e-4, rtol=1e-4)


BAD = [
    (dict(mask_image=None), "mask_image"),
    (dict(mask_image="mask.png"), "mask_image"),
    (dict(image=None), "image"),
    (dict(strength=2.0), "strength"),
    (dict(height=36), "height"),
    (dict(padding_mask_crop=8), "padding_mask_crop"),
    (dict(latents=torch.zeros(1, 4, 2, 2)), "latents"),
    (dict(masked_image_latents=torch.zeros(1, 3, 8, 8)), "masked_image_latents"),
    (
        dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["image"]),
        "callback_on_step_end_tensor_inputs",
    ),
]


@pytest.mark.parametrize("kwargs,name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_arguments_name_the_argument(pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        run(pipe, **kwargs)


def test_unet_with_other_channel_counts_is_refused(pipe):
    unet = td.UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 5})
    p = td.StableDiffusionInpaintPipeline(**{**pipe.components, "unet": unet})
    with pytest.raises(ValueError, match="unet"):
        run(p)
