import math

import numpy as np
import pytest
import torch

from torchdiffusion.training.captioned_digits import (
    COLOR_NAMES,
    CaptionedDigitsDataset,
    Prompt,
    grammar_prompts,
    parse_caption,
)
from torchdiffusion.training.text_yardstick import TextToImageYardstick, frame_digit, ink_mask, measure_colors


@pytest.fixture(scope="module")
def yardstick():
    return TextToImageYardstick()


def _labelled(ds, n):
    """Images and (digit, fg, bg) of the first ``n`` items: every attribute asked for."""
    want = list(zip(ds.digits[:n].tolist(), ds.fg[:n].tolist(), ds.bg[:n].tolist()))
    return ds.images(range(n)), want


@pytest.fixture(scope="module")
def held_out():
    return _labelled(CaptionedDigitsDataset("held_out", num_images=600, seed=5), 600)


def test_classifiers_read_real_data(yardstick, held_out):
    assert yardstick.test_accuracy >= 0.99
    images, want = held_out
    s = yardstick.score(images, want)
    assert s["digit_accuracy"] >= 0.99 and s["fg_accuracy"] >= 0.99 and s["bg_accuracy"] >= 0.99
    assert s["held_out_accuracy"] >= 0.99 and s["prompt_accuracy"] >= 0.99 and s["num_images"] == 600
    assert s["frechet_distance"] < 10
    train_images, train_want = _labelled(CaptionedDigitsDataset(num_images=600, seed=9), 600)
    t = yardstick.score(train_images, train_want)
    assert t["digit_accuracy"] >= 0.99 and t["fg_accuracy"] >= 0.99 and t["bg_accuracy"] >= 0.99
    assert math.isnan(t["held_out_accuracy"])  # no held-out pair asked for


def test_degraded_images_score_clearly_worse(yardstick, held_out):
    images, want = held_out
    real = yardstick.score(images, want)
    g = torch.Generator().manual_seed(0)
    noisy = yardstick.score((images + 0.6 * torch.randn(images.shape, generator=g)).clamp(-1, 1), want)
    assert noisy["digit_accuracy"] < real["digit_accuracy"] - 0.1
    assert noisy["frechet_distance"] > 20 * real["frechet_distance"]
    recoloured = yardstick.score(images[:, [1, 2, 0]], want)  # the digit stays, the colours are wrong
    assert recoloured["digit_accuracy"] >= 0.99 and recoloured["fg_accuracy"] < 0.2
    assert recoloured["held_out_accuracy"] < 0.2 and recoloured["frechet_distance"] > 20 * real["frechet_distance"]
    shuffled = yardstick.score(images[torch.randperm(len(images), generator=g)], want)
    assert shuffled["prompt_accuracy"] < 0.2 and shuffled["held_out_accuracy"] < 0.5
    blank = yardstick.score(torch.zeros_like(images), want)
    assert blank["digit_accuracy"] < 0.3 and blank["frechet_distance"] > 20 * real["frechet_distance"]


def test_prompts_as_captions_prompts_or_tuples(yardstick):
    ds = CaptionedDigitsDataset("held_out", num_images=64, seed=2)
    images = ds.images()
    by_caption = yardstick.score(images, ds.captions)
    by_prompt = yardstick.score(images, [parse_caption(c) for c in ds.captions])
    assert by_caption == by_prompt and by_caption["digit_accuracy"] >= 0.95
    names = [(d, COLOR_NAMES[f], None) for d, f in zip(ds.digits.tolist(), ds.fg.tolist())]
    s = yardstick.score(images * 0.5 + 0.5, names, value_range=(0, 1))
    assert s["held_out_accuracy"] >= 0.95 and math.isnan(s["bg_accuracy"])
    big = torch.nn.functional.interpolate(images, scale_factor=2, mode="nearest")  # other sizes are resized
    assert yardstick.score(big, names)["held_out_accuracy"] >= 0.95


def test_classify(yardstick):
    ds = CaptionedDigitsDataset(num_images=50, seed=3)
    found = yardstick.classify(ds.images())
    assert torch.equal(found["fg"], ds.fg) and torch.equal(found["bg"], ds.bg)
    assert (found["digit"] == ds.digits).float().mean() >= 0.96 and found["features"].shape == (50, 70)


def test_mask_and_frame_helpers():
    x = torch.zeros(2, 3, 32, 32)
    x[:, 0] = 1.0  # red background
    x[0, :, 10:20, 12:16] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # a blue bar
    bg, fg = measure_colors(x)
    assert torch.allclose(bg[0], torch.tensor([1.0, 0, 0])) and torch.allclose(fg[0], torch.tensor([0, 0, 1.0]))
    mask = ink_mask(x, bg, fg)
    assert mask[0, 0, 15, 13] == 1 and mask[0, 0, 0, 0] == 0 and mask[1].sum() == 0  # no digit: empty mask
    framed = frame_digit(mask)
    assert framed.shape == (2, 1, 16, 16) and framed[0, 0, 8, 8] > 0.9 and framed[1].sum() == 0


def test_build_is_deterministic():
    a, b = (TextToImageYardstick(seed=1, epochs=1, images_per_epoch=256) for _ in range(2))
    for (name, p), q in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(p, q), name
    assert a.test_accuracy == b.test_accuracy and a.color_scale == b.color_scale


def test_bad_arguments_are_named(yardstick):
    images = torch.zeros(2, 3, 32, 32)
    for kwargs, name in [({"epochs": 0}, "epochs"), ({"images_per_epoch": 10}, "images_per_epoch"),
                         ({"seed": -2}, "seed")]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            TextToImageYardstick(**kwargs)
    with pytest.raises(ValueError, match="images"):
        yardstick.score(torch.zeros(2, 1, 32, 32), ["7", "7"])
    with pytest.raises(ValueError, match="images"):
        yardstick.score(torch.zeros(0, 3, 32, 32), [])
    with pytest.raises(ValueError, match="prompts"):
        yardstick.score(images, ["7"])
    with pytest.raises(TypeError, match="prompts"):
        yardstick.score(images, "7")
    with pytest.raises(ValueError, match="caption"):
        yardstick.score(images, ["7", "a pink 7"])
    with pytest.raises(ValueError, match="fg"):
        yardstick.score(images, [(7, "pink", None)] * 2)
    with pytest.raises(ValueError, match="digit"):
        yardstick.score(images, [(12, None, None)] * 2)
    with pytest.raises(ValueError, match="fg and bg"):
        yardstick.score(images, [(1, "red", "red")] * 2)
    with pytest.raises(ValueError, match="value_range"):
        yardstick.score(images, ["7", "7"], value_range=(1, 0))
    with pytest.raises(ValueError, match="reference_size"):
        yardstick.score(images, ["7", "7"], reference_size=1)


def test_prompt_sets_score_on_real_images(yardstick):
    """Real images drawn for every held-out prompt: the yardstick reads them as asked."""
    prompts = grammar_prompts("held_out")
    want = yardstick.expected(prompts, len(prompts))
    images = yardstick.reference(want, len(prompts), seed=11)
    s = yardstick.score(images, prompts)
    assert s["held_out_accuracy"] >= 0.95 and s["prompt_accuracy"] >= 0.95
    assert isinstance(prompts[0], Prompt) and np.isfinite(s["frechet_distance"])


def test_evaluate_runs_a_model_on_the_prompt_sets(yardstick):
    calls = []

    def faithful(prompts, seed):  # a "model" that draws exactly what it is asked
        calls.append((len(prompts), seed))
        return yardstick.reference(yardstick.expected(prompts, len(prompts)), len(prompts), seed) * 0.5 + 0.5

    result = yardstick.evaluate(faithful, num_per_set=40, batch_size=16, seed=3)
    assert calls == [(16, 3), (16, 19), (8, 35)] * 2
    assert result["in_distribution"]["prompt_accuracy"] >= 0.95 and result["held_out"]["held_out_accuracy"] >= 0.95
    colour_blind = yardstick.evaluate(lambda p, s: faithful(p, s)[:, [2, 0, 1]], num_per_set=40)
    assert colour_blind["held_out"]["held_out_accuracy"] < 0.2
    with pytest.raises(TypeError, match="generate"):
        yardstick.evaluate("pipe")
    with pytest.raises(ValueError, match="batch_size"):
        yardstick.evaluate(faithful, batch_size=0)
    with pytest.raises(ValueError, match="generate must return"):
        yardstick.evaluate(lambda p, s: torch.zeros(1, 3, 32, 32), num_per_set=4)


def test_smoke_on_a_tiny_text_to_image_pipeline_with_the_digits_tokenizer(yardstick, tmp_path):
    """A handful of generated images (a random tiny SD pipeline, its tokenizer from write_digits_tokenizer)."""
    transformers = pytest.importorskip("transformers")
    import torchdiffusion as td
    from tests.sd_fixtures import tiny_sd_components, tiny_text_encoder
    from torchdiffusion.pretrained.tokenizer import write_digits_tokenizer

    parts = tiny_sd_components(td, tmp_path / "unused")
    write_digits_tokenizer(tmp_path / "tokenizer")
    parts["tokenizer"] = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    parts["text_encoder"] = tiny_text_encoder(parts["tokenizer"], max_position_embeddings=16)
    pipe = td.StableDiffusionPipeline(**parts, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def generate(prompts, seed):
        g = torch.Generator().manual_seed(seed)
        return pipe(prompts, num_inference_steps=2, generator=g, output_type="pt").images

    result = yardstick.evaluate(generate, num_per_set=4, batch_size=4)
    for scores in result.values():
        assert scores["num_images"] == 4 and 0 <= scores["digit_accuracy"] <= 1
        assert np.isfinite(scores["frechet_distance"]) and scores["frechet_distance"] > 0


@pytest.mark.slow
def test_reads_unseen_handwriting():
    """With 300 glyphs kept out of its training, the digit CNN still reads them (measured 0.984)."""
    assert TextToImageYardstick(hold_out_glyphs=True).test_accuracy >= 0.97
