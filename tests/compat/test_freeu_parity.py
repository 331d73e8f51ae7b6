"""FreeU (enable_freeu / disable_freeu) on UNet2DConditionModel and the SD pipelines: the same numbers as Diffusers."""

import numpy as np
import pytest
import torch

import torchdiffusion as td
from tests.compat.test_sd_models_parity import SD1, SDXL

diffusers = pytest.importorskip("diffusers")

FREEU = dict(s1=0.9, s2=0.2, b1=1.5, b2=1.6)  # the SD 1.x values of FreeU's repository


def _pair(kwargs):
    torch.manual_seed(0)
    theirs = diffusers.UNet2DConditionModel(**kwargs).eval()
    ours = td.UNet2DConditionModel(**kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _inputs(kwargs, h, w):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, h, w, generator=g)
    context = torch.randn(2, 5, kwargs["cross_attention_dim"], generator=g)
    extra = {}
    if kwargs.get("addition_embed_type") == "text_time":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 20, generator=g), "time_ids": torch.randn(2, 6)}
    return x, torch.tensor([10, 500]), context, extra


@pytest.mark.parametrize("name,kwargs", [("sd1", SD1), ("sdxl", SDXL)])
@pytest.mark.parametrize("size", [(16, 16), (12, 20)], ids=["pow2", "not_pow2"])
def test_unet_with_freeu_matches_diffusers(name, kwargs, size):
    theirs, ours = _pair(kwargs)
    x, t, context, extra = _inputs(kwargs, *size)
    with torch.no_grad():
        plain = ours(x, t, context, **extra).sample
        theirs.enable_freeu(**FREEU)
        ours.enable_freeu(**FREEU)
        a, b = theirs(x, t, context, **extra).sample, ours(x, t, context, **extra).sample
        assert (a - b).abs().max() <= 1e-4
        assert (b - plain).abs().max() > 1e-3  # FreeU changed something
        assert ours.up_blocks[0].b1 == theirs.up_blocks[0].b1 == 1.5
        theirs.disable_freeu()
        ours.disable_freeu()
        assert ours.up_blocks[1].s2 is None
        torch.testing.assert_close(ours(x, t, context, **extra).sample, plain)
        torch.testing.assert_close(theirs(x, t, context, **extra).sample, plain, atol=1e-4, rtol=0)


def test_pipeline_with_freeu_matches_diffusers(tiny_sd_folder):
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    ours = td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    kwargs = dict(prompt="the cat", num_inference_steps=3, output_type="np")
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
        pipe.enable_freeu(**FREEU)
    a = theirs(generator=torch.Generator().manual_seed(0), **kwargs).images
    b = ours(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.abs(a - b).max() <= 2e-3
    ours.disable_freeu()
    c = ours(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.abs(c - b).max() > 1e-4


def test_freeu_factors_are_checked():
    _, ours = _pair(SD1)
    for bad in (dict(FREEU, s1="0.9"), dict(FREEU, b2=float("nan")), dict(FREEU, s2=None)):
        name = next(k for k in FREEU if bad[k] != FREEU[k] or bad[k] is None)
        with pytest.raises(ValueError, match=name):
            ours.enable_freeu(**bad)


def test_zero_factor_applies_freeu():
    """Diffusers skips FreeU when any factor is 0 (it tests truthiness); we apply the factors as given
    (docs/compatibility.md)."""
    _, ours = _pair(SD1)
    x, t, context, _ = _inputs(SD1, 16, 16)
    with torch.no_grad():
        plain = ours(x, t, context).sample
        ours.enable_freeu(**dict(FREEU, s2=0.0))
        assert (ours(x, t, context).sample - plain).abs().max() > 1e-3
