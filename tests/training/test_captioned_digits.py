import json
import os

import numpy as np
import pytest
import torch

from torchdiffusion.training.captioned_digits import (
    COLOR_JITTER,
    COLOR_NAMES,
    HELD_OUT_PAIRS,
    PALETTE,
    PALETTE_RGB,
    CaptionedDigitsDataset,
    Prompt,
    collate_captioned,
    grammar_prompts,
    make_caption,
    parse_caption,
    yardstick_prompts,
)
from torchdiffusion.training.data import BatchPlan, iterate_batches
from torchdiffusion.training.sources import load_training_dataset

HELD = {(d, COLOR_NAMES.index(c)) for d, c in HELD_OUT_PAIRS}


@pytest.fixture(scope="module")
def train():
    return CaptionedDigitsDataset()


def test_palette_and_held_out_pairs_are_the_issue_s():
    assert PALETTE == {
        "black": (0, 0, 0), "white": (255, 255, 255), "red": (230, 30, 30), "green": (30, 180, 30),
        "blue": (30, 60, 230), "yellow": (240, 220, 30), "purple": (150, 40, 200), "orange": (250, 140, 20),
    }  # fmt: skip
    assert set(HELD_OUT_PAIRS) == {(4, "green"), (7, "red"), (2, "blue"), (9, "yellow")}


def test_items_images_and_labels(train):
    assert len(train) == 20_000 and train.num_classes == 10 and train.channels == 3 and train.resolution == 32
    for i in (0, 1, 2, 19_999, -1):
        item = train[i]
        x = item["images"]
        assert set(item) == {"images", "labels", "captions", "fg", "bg"}
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
        levels = (x + 1) * 127.5
        assert torch.allclose(levels, levels.round(), atol=1e-3)  # 8-bit, as a PNG would hold it
        p = parse_caption(item["captions"])
        assert p.digit == item["labels"] == int(train.digits[i])
        assert p.fg in (None, COLOR_NAMES[item["fg"]]) and p.bg in (None, COLOR_NAMES[item["bg"]])
        # the border shows the background colour, within the shade jitter
        border = torch.cat([x[:, 0], x[:, -1]], 1) * 0.5 + 0.5
        assert (border.median(1).values - PALETTE_RGB[item["bg"]]).abs().max() <= COLOR_JITTER / 255 + 1e-4
    assert torch.equal(train.images([0, 5]), torch.stack([train[0]["images"], train[5]["images"]]))
    assert torch.equal(train[(3, 123)]["images"], train[3]["images"])  # no augmentation: same every visit


def test_deterministic_from_the_seed():
    a, b, c = (CaptionedDigitsDataset(num_images=300, seed=s) for s in (7, 7, 8))
    assert a.captions == b.captions and torch.equal(a.images(), b.images())
    assert a.captions != c.captions and not torch.equal(a.images(), c.images())
    # the first items do not depend on how many are asked for
    assert CaptionedDigitsDataset(num_images=100, seed=7).captions == a.captions[:100]


def test_held_out_pairs_are_excluded_from_training_and_are_the_held_out_split(train):
    pairs = set(zip(train.digits.tolist(), train.fg.tolist()))
    assert not pairs & HELD
    assert len(pairs) == 80 - 4  # every other (digit, fg) pair is there
    assert (train.fg != train.bg).all()
    assert set(train.bg.tolist()) == set(range(8)) and set(train.digits.tolist()) == set(range(10))
    held = CaptionedDigitsDataset("held_out")
    assert len(held) == 2000 and set(zip(held.digits.tolist(), held.fg.tolist())) == HELD
    assert (held.fg != held.bg).all() and len(set(zip(held.digits.tolist(), held.bg.tolist()))) == 4 * 7
    for caption in held.captions[:200]:
        p = parse_caption(caption)
        assert p.fg is None or p.held_out


def test_captions_use_every_template_and_both_digit_forms(train):
    kinds = set()
    for caption, digit in zip(train.captions[:2000], train.digits[:2000].tolist()):
        p = parse_caption(caption)
        kinds.add((p.fg is None, p.bg is None, str(digit) in caption.split()))
    assert kinds == {(f, b, n) for f in (False, True) for b in (False, True) for n in (False, True)}


def test_grammar_prompts_cover_the_grammar():
    ind, held = grammar_prompts("in_distribution"), grammar_prompts("held_out")
    assert len(held) == 4 * 8 * 2  # 4 pairs x (7 backgrounds + none) x (numeral, word)
    assert len(ind) == 2 * (10 * 8 * 7 - 4 * 7 + 10 * 8 - 4 + 10 * 8 + 10)
    assert len({p.text for p in ind + held}) == len(ind) + len(held)
    assert all(p.held_out for p in held) and not any(p.held_out for p in ind)
    for p in ind + held:
        assert parse_caption(p.text) == p
    texts = {p.text for p in ind}
    assert {"7", "seven", "a red 8", "a white 0 on a black background", "a nine on a orange background"} <= texts


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a red 7 on a blue background", Prompt("a red 7 on a blue background", 7, "red", "blue")),
        ("  A  Purple   SEVEN ", Prompt("a purple seven", 7, "purple", None)),
        ("a 3 on a white background", Prompt("a 3 on a white background", 3, None, "white")),
        ("zero", Prompt("zero", 0, None, None)),
    ],
)
def test_parse_caption(text, expected):
    assert parse_caption(text) == expected


@pytest.mark.parametrize(
    "text", ["a 7", "red 7", "a pink 7", "a red 7 on a red background", "a red a 7", "77", "a red 7 on blue", ""]
)
def test_parse_caption_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError, match="caption"):
        parse_caption(text)


def test_make_caption_and_its_bad_arguments():
    assert make_caption(4, "green", "black", word=True) == "a green four on a black background"
    assert make_caption(4) == "4"
    with pytest.raises(ValueError, match="digit"):
        make_caption(10)
    with pytest.raises(ValueError, match="fg"):
        make_caption(1, "pink")
    with pytest.raises(ValueError, match="fg and bg"):
        make_caption(1, "red", "red")
    with pytest.raises(TypeError, match="caption"):
        parse_caption(7)


def test_yardstick_prompts():
    sets = yardstick_prompts(100, seed=3)
    assert set(sets) == {"in_distribution", "held_out"} and all(len(v) == 100 for v in sets.values())
    assert sets == yardstick_prompts(100, seed=3) and sets != yardstick_prompts(100, seed=4)
    assert len(set(sets["in_distribution"])) == 100  # no repeats while the pool lasts
    assert set(sets["held_out"][:64]) == set(grammar_prompts("held_out"))  # the whole pool, then again
    assert all(p.held_out for p in sets["held_out"]) and not any(p.held_out for p in sets["in_distribution"])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_per_set"):
            yardstick_prompts(bad)


def test_bad_arguments_are_named():
    for kwargs, name in [
        ({"split": "test"}, "split"),
        ({"num_images": 0}, "num_images"),
        ({"resolution": 4}, "resolution"),
        ({"seed": -1}, "seed"),
        ({"channels": 1}, "channels"),
        ({"random_flip": True}, "random_flip"),
    ]:
        with pytest.raises(ValueError, match=name):
            CaptionedDigitsDataset(**kwargs)
    with pytest.raises(IndexError, match="out of range"):
        CaptionedDigitsDataset(num_images=5)[5]


def test_picker_and_batches():
    ds = load_training_dataset("captioned-digits", 16)
    assert isinstance(ds, CaptionedDigitsDataset) and ds.split == "train" and ds[0]["images"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="channels"):
        load_training_dataset("captioned-digits", 16, channels=1)
    batch = next(iterate_batches(ds, BatchPlan(len(ds), 4, seed=0)))
    assert batch["images"].shape == (4, 3, 16, 16) and batch["labels"].dtype == torch.long
    keys = BatchPlan(len(ds), 4, seed=0).keys(0)
    captioned = collate_captioned([ds[k] for k in keys])
    assert torch.equal(captioned["images"], batch["images"]) and torch.equal(captioned["labels"], batch["labels"])
    assert captioned["captions"] == [ds.captions[i] for i, _ in keys] and captioned["fg"].shape == (4,)


def test_cli_trains_on_captioned_digits(tmp_path):
    from torchdiffusion.cli import main

    out = str(tmp_path / "run")
    tiny = ["--resolution", "8", "--model-channels", "8,16", "--layers-per-block", "1", "--steps", "2",
            "--batch-size", "4", "--sample-steps", "2", "--lr-warmup-steps", "1", "--no-progress"]  # fmt: skip
    assert main(["train", "--dataset", "captioned-digits", "--class-conditional", "--output-dir", out, *tiny]) == 0
    config = json.load(open(os.path.join(out, "unet", "config.json")))
    assert config["in_channels"] == 3 and config["num_class_embeds"] == 11


def test_digits_are_centred_enough_to_stay_inside_the_frame(train):
    x = train.images(np.arange(500)) * 0.5 + 0.5
    bg = PALETTE_RGB[train.bg[:500]][..., None, None]
    ink = ((x - bg).abs().amax(1) > 0.2).float()
    assert ink[:, [0, -1], :].sum() == 0 and ink[:, :, [0, -1]].sum() == 0  # never touches the border
    area = ink.mean((1, 2))
    assert area.min() > 0.03 and area.max() < 0.6
