"""VaeImageProcessor against Diffusers' on PIL, numpy and tensor inputs, for the image and the mask processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from torchdiffusion.image_processor import VaeImageProcessor

dimg = pytest.importorskip("diffusers.image_processor")

IMAGE_KW: dict = {"vae_scale_factor": 8}
MASK_KW: dict = {"vae_scale_factor": 8, "do_normalize": False, "do_binarize": True, "do_convert_grayscale": True}
SETTINGS = [
    IMAGE_KW,
    MASK_KW,
    {"vae_scale_factor": 4, "resample": "bicubic", "do_convert_rgb": True},
    {"vae_scale_factor": 8, "do_resize": False},
    {"vae_scale_factor": 8, "resample": "nearest", "reducing_gap": 2},
]


def _pair(**kw):
    return VaeImageProcessor(**kw), dimg.VaeImageProcessor(**kw)


def _rgb(h: int = 21, w: int = 35, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _inputs():
    rgb = _rgb()
    f = rgb.astype(np.float32) / 255.0
    yield "pil", Image.fromarray(rgb)
    yield "pil-list", [Image.fromarray(rgb), Image.fromarray(_rgb(seed=1))]
    yield "pil-L", Image.fromarray(rgb).convert("L")
    yield "pil-RGBA", Image.fromarray(rgb).convert("RGBA")
    yield "np-hwc", f
    yield "np-bhwc", np.stack([f, f[::-1]])
    yield "np-list", [f, f[::-1].copy()]
    yield "pt-chw", torch.from_numpy(f).permute(2, 0, 1)
    yield "pt-bchw", torch.from_numpy(np.stack([f, f[::-1]])).permute(0, 3, 1, 2)
    yield "pt-list", [torch.from_numpy(f).permute(2, 0, 1)] * 2


def _inputs_for(kw: dict):
    for name, image in _inputs():
        gray = kw.get("do_convert_grayscale")
        if gray and name in ("np-hwc", "pt-chw", "np-list", "pt-list"):
            continue  # Diffusers reads a 3-D array as a batch of masks here; see the mask-specific test
        yield name, image


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_preprocess_matches_diffusers(kw):
    ours, theirs = _pair(**kw)
    for name, image in _inputs_for(kw):
        for size in ({}, {"height": 16, "width": 24}):
            a, b = ours.preprocess(image, **size), theirs.preprocess(image, **size)
            assert a.shape == b.shape, (name, size)
            assert a.dtype == b.dtype, (name, size)
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=f"{name} {size}")


@pytest.mark.parametrize("mode", ["fill", "crop"])
def test_preprocess_resize_modes_and_crop_match(mode):
    ours, theirs = _pair(**IMAGE_KW)
    image = Image.fromarray(_rgb(40, 24))
    a = ours.preprocess(image, 32, 48, resize_mode=mode, crops_coords=(2, 3, 22, 35))
    b = theirs.preprocess(image, 32, 48, resize_mode=mode, crops_coords=(2, 3, 22, 35))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_masks_as_batches_and_latents_match():
    ours, theirs = _pair(**MASK_KW)
    masks = torch.rand(3, 16, 24)  # a batch of single-channel masks (B, H, W)
    torch.testing.assert_close(ours.preprocess(masks), theirs.preprocess(masks))
    ours, theirs = _pair(**IMAGE_KW)
    latents = torch.randn(2, 4, 5, 7)
    assert ours.preprocess(latents) is not None and torch.equal(ours.preprocess(latents), theirs.preprocess(latents))


def test_negative_tensors_are_taken_as_normalized_with_a_warning():
    ours, theirs = _pair(**IMAGE_KW)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with pytest.warns(FutureWarning):
        a = ours.preprocess(x)
    with pytest.warns(FutureWarning):
        b = theirs.preprocess(x)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("output_type", ["pt", "np", "pil", "latent"])
@pytest.mark.parametrize("kw", [IMAGE_KW, MASK_KW], ids=["image", "mask"])
def test_postprocess_matches_diffusers(output_type, kw):
    ours, theirs = _pair(**kw)
    x = torch.rand(2, 3, 8, 16) * 2.4 - 1.2
    if output_type == "pil" or not kw.get("do_normalize", True):  # see test_pil_output_clips_out_of_range_values
        x = x.clamp(0, 1)
    for flags in (None, [True, False]):
        a = ours.postprocess(x, output_type, do_denormalize=flags)
        b = theirs.postprocess(x, output_type, do_denormalize=flags)
        if output_type == "pil":
            assert [np.asarray(i).tolist() for i in a] == [np.asarray(i).tolist() for i in b]
        elif output_type == "np":
            np.testing.assert_allclose(a, b, atol=1e-7)
        else:
            torch.testing.assert_close(a, b)


def test_pil_output_clips_out_of_range_values():
    """Diffusers casts values outside [0, 1] straight to uint8 (1.2 -> 50, -0.1 -> 230: wrapped noise) when an
    image is not denormalized; we clip (docs/compatibility.md)."""
    x = torch.tensor([1.2, -0.1, 0.5]).view(1, 3, 1, 1)
    (im,) = VaeImageProcessor(do_normalize=False).postprocess(x, "pil")
    assert np.asarray(im).tolist() == [[[255, 0, 128]]]


def test_inputs_diffusers_cannot_read():
    """A 2-D tensor (H, W) is one grayscale image (Diffusers reads H as the channels) and uint8 tensors are scaled
    by 1/255 (Diffusers normalizes 0..255 to -1..509) (docs/compatibility.md)."""
    p = VaeImageProcessor(do_normalize=False)
    gray = torch.rand(16, 24)
    assert torch.equal(p.preprocess(gray), gray[None, None])
    ramp = torch.arange(0, 256, 17, dtype=torch.uint8).repeat(3, 16, 1)  # (3, 16, 16)
    torch.testing.assert_close(p.preprocess(ramp), ramp[None].float() / 255)


def test_static_conversions_match():
    rgb = _rgb(9, 11)
    images = [Image.fromarray(rgb), Image.fromarray(rgb[::-1].copy())]
    P, D = VaeImageProcessor, dimg.VaeImageProcessor
    np.testing.assert_array_equal(P.pil_to_numpy(images), D.pil_to_numpy(images))
    gray = [im.convert("L") for im in images]
    np.testing.assert_array_equal(P.pil_to_numpy(gray), D.pil_to_numpy(gray))
    arr = D.pil_to_numpy(images)
    torch.testing.assert_close(P.numpy_to_pt(arr), D.numpy_to_pt(arr))
    torch.testing.assert_close(P.numpy_to_pt(arr[..., 0]), D.numpy_to_pt(arr[..., 0]))
    pt = D.numpy_to_pt(arr)
    np.testing.assert_array_equal(P.pt_to_numpy(pt), D.pt_to_numpy(pt))
    for a, b in zip(P.numpy_to_pil(arr), D.numpy_to_pil(arr)):
        assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(P.numpy_to_pil(arr[..., :1]), D.numpy_to_pil(arr[..., :1])):
        assert a.mode == b.mode == "L" and np.array_equal(np.asarray(a), np.asarray(b))
    torch.testing.assert_close(P.normalize(pt), D.normalize(pt))
    torch.testing.assert_close(P.denormalize(pt * 3 - 1), D.denormalize(pt * 3 - 1))


def test_crop_region_resize_and_overlay_match():
    ours, theirs = _pair(**IMAGE_KW)
    mask = np.zeros((40, 64), dtype=np.uint8)
    mask[10:20, 30:44] = 255
    mask_image = Image.fromarray(mask)
    for pad in (0, 4):
        assert ours.get_crop_region(mask_image, 32, 32, pad) == theirs.get_crop_region(mask_image, 32, 32, pad)
    box = ours.get_crop_region(mask_image, 32, 32, 4)
    init = Image.fromarray(_rgb(40, 64))
    inpainted = Image.fromarray(_rgb(32, 32, seed=3))
    for coords, im in ((box, inpainted), (None, Image.fromarray(_rgb(40, 64, seed=4)))):
        a = ours.apply_overlay(mask_image, init, im, coords)
        b = theirs.apply_overlay(mask_image, init, im, coords)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    arr = np.random.default_rng(0).random((2, 12, 20, 3)).astype(np.float32)
    np.testing.assert_array_equal(ours.resize(arr, 8, 16), theirs.resize(arr, 8, 16))
    pil = Image.fromarray(_rgb(30, 50))
    for mode in ("default", "fill", "crop"):
        a, b = ours.resize(pil, 24, 24, mode), theirs.resize(pil, 24, 24, mode)
        assert np.array_equal(np.asarray(a), np.asarray(b)), mode
    h, w = ours.get_default_height_width(pil)
    assert (h, w) == theirs.get_default_height_width(pil) == (24, 48)


def test_import_paths_match_diffusers():
    import torchdiffusion

    assert torchdiffusion.VaeImageProcessor is VaeImageProcessor  # as diffusers.VaeImageProcessor


def test_config_matches_diffusers():
    for kw in SETTINGS:
        ours, theirs = _pair(**kw)
        for key, value in theirs.config.items():
            if not key.startswith("_"):
                assert ours.config[key] == value, key


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="do_convert_rgb"):
        VaeImageProcessor(do_convert_rgb=True, do_convert_grayscale=True)
    with pytest.raises(ValueError, match="resample"):
        VaeImageProcessor(resample="cubic-ish")
    with pytest.raises(ValueError, match="vae_scale_factor"):
        VaeImageProcessor(vae_scale_factor=0)
    p = VaeImageProcessor()
    with pytest.raises(ValueError, match="resize_mode"):
        p.preprocess(torch.rand(1, 3, 16, 16), resize_mode="fill")
    with pytest.raises(ValueError, match="resize_mode"):
        p.resize(Image.new("RGB", (8, 8)), 8, 8, resize_mode="stretch")
    with pytest.raises(ValueError, match="image"):
        p.preprocess("not an image")
    with pytest.raises(ValueError, match="output_type"):
        p.postprocess(torch.rand(1, 3, 8, 8), output_type="numpy")
    with pytest.raises(ValueError, match="do_denormalize"):
        p.postprocess(torch.rand(2, 3, 8, 8), do_denormalize=[True])
    with pytest.raises(ValueError, match="image"):
        p.postprocess(np.zeros((1, 8, 8, 3)))


def test_the_sd_pipelines_carry_processors(tmp_path):
    import torchdiffusion
    from tests.sd_fixtures import tiny_sd_components
    from torchdiffusion import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    parts = tiny_sd_components(torchdiffusion, tmp_path / "tok")
    pipe = StableDiffusionPipeline(**parts, requires_safety_checker=False)
    assert isinstance(pipe.image_processor, VaeImageProcessor)
    assert pipe.image_processor.config.vae_scale_factor == pipe.vae_scale_factor
    inpaint = StableDiffusionInpaintPipeline(**pipe.components)
    mp = inpaint.mask_processor.config
    assert (mp.do_normalize, mp.do_binarize, mp.do_convert_grayscale) == (False, True, True)
