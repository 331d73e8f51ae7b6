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
    (dict(padding_mask_crop=8), "output_type"),  # np output with padding_mask_crop: Diffusers wants PIL too
    (dict(padding_mask_crop=-1, output_type="pil"), "padding_mask_crop"),
    (dict(padding_mask_crop=2, output_type="pil", image=np.zeros((64, 64, 3))), "image"),
    (dict(padding_mask_crop=2, output_type="pil", mask_image=[hole()]), "mask_image"),
    (dict(padding_mask_crop=2, output_type="pil", mask_image=hole().resize((32, 64))), "mask_image"),
    (dict(padding_mask_crop=2, output_type="pil", mask_image=Image.new("L", (64, 64))), "mask_image"),
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


def test_padding_mask_crop_repaints_only_the_crop(pipe):
    from torchdiffusion.utils.image_regions import mask_crop_region

    m = np.zeros((64, 64), "uint8")
    m[40:50, 0:4] = 255
    mask = Image.fromarray(m)
    # box x [0, 4) y [40, 50), padded by 2 to x [0, 6) y [38, 52), widened to 14 x 14 around x=3: slid to x >= 0
    assert mask_crop_region(mask, 64, 64, 2) == (0, 38, 14, 52)
    assert mask_crop_region(mask, 32, 64, 2) == (0, 38, 7, 52)  # output 1:2 -> the box widens by int(7 - 6)
    out = run(pipe, mask_image=mask, padding_mask_crop=2, output_type="pil")
    assert len(out) == 1 and out[0].size == (64, 64)
    got, original = np.asarray(out[0]), np.asarray(picture())
    assert np.array_equal(got[m == 0], original[m == 0]) and not np.array_equal(got[m > 0], original[m > 0])
    images, nsfw = pipe(
        "a",
        image=picture(),
        mask_image=mask,
        padding_mask_crop=0,
        num_inference_steps=1,
        output_type="pil",
        return_dict=False,
    )
    assert len(images) == 1 and nsfw is None
    with pytest.raises(TypeError, match="padding_mask_crop"):
        run(pipe, mask_image=mask, padding_mask_crop=2.5, output_type="pil")


def test_unet_with_other_channel_counts_is_refused(pipe):
    unet = td.UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 5})
    p = td.StableDiffusionInpaintPipeline(**{**pipe.components, "unet": unet})
    with pytest.raises(ValueError, match="unet"):
        run(p)


def test_fill_cover_and_paste_helpers():
    from torchdiffusion.utils.image_regions import (
        crop_for_inpainting,
        paste_inpainted,
        resize_cover,
        resize_fill,
    )

    tall = Image.fromarray(np.tile(np.arange(20, dtype="uint8")[:, None, None] * 10, (1, 10, 3)))  # 10 x 20
    filled = np.asarray(resize_fill(tall, 20, 20))  # fitted 10 x 20 in the middle, edge columns stretched
    assert filled.shape == (20, 20, 3) and (filled[:, :5] == filled[:, 5:6]).all()
    assert (filled[:, 15:] == filled[:, 14:15]).all()
    covered = resize_cover(tall, 20, 20)  # scaled to 20 x 40, the middle 20 rows kept
    assert covered.size == (20, 20) and np.asarray(covered)[0, 0, 0] > np.asarray(tall)[0, 0, 0]
    image = Image.fromarray(np.full((16, 16, 3), 100, "uint8"))
    m = np.zeros((16, 16), "uint8")
    m[4:8, 4:8] = 255
    mask = Image.fromarray(m)
    crop, crop_mask = crop_for_inpainting(image, mask, (2, 2, 10, 10), 32, 32)
    assert crop.size == crop_mask.size == (32, 32) and crop_mask.mode == "L"
    small = np.asarray(crop_mask)  # the 4 x 4 hole at (2, 2) of the crop, scaled x4 with Lanczos
    assert small[11:21, 11:21].min() > 200 and small[:4].max() < 30 and small[:, 28:].max() < 30
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    pasted = np.asarray(paste_inpainted(image, mask, white, (2, 2, 10, 10)))
    assert (pasted[m > 0] == 255).all() and (pasted[m == 0] == 100).all()
