"""Captioned images the way people keep them (metadata.jsonl, name.txt pairs, a datasets.Dataset), and every bad
input found before a training step, with an error that names the file, row or column."""

import json
import os

import pytest
import torch

from tests.training.t2i_common import CAPTIONS, _image, write_kohya_folder, write_metadata_folder
from torchdiffusion.training.captioned import CaptionedImageFolder
from torchdiffusion.training.data import BatchPlan, iterate_batches
from torchdiffusion.training.sources import load_captioned_dataset


def test_metadata_and_kohya_folders_give_the_same_items(tmp_path):
    a = load_captioned_dataset(write_metadata_folder(str(tmp_path / "meta"), 4), 32)
    b = load_captioned_dataset(write_kohya_folder(str(tmp_path / "kohya"), 4), 32)
    assert isinstance(a, CaptionedImageFolder) and len(a) == len(b) == 4
    for i in range(4):
        assert a[i]["captions"] == b[i]["captions"] == CAPTIONS[i]
        assert a[i]["images"].shape == (3, 32, 32) and torch.equal(a[i]["images"], b[i]["images"])
    assert not a.random_augmentation  # centre crop, no flip: cacheable
    assert load_captioned_dataset(str(tmp_path / "meta"), 32, random_flip=True).random_augmentation
    batch = next(iterate_batches(a, BatchPlan(4, 2, seed=0)))
    assert batch["images"].shape == (2, 3, 32, 32) and len(batch["captions"]) == 2


def test_metadata_in_a_subfolder_and_another_caption_column(tmp_path):
    write_metadata_folder(str(tmp_path / "data" / "train"), 3, column="caption")
    data = load_captioned_dataset(str(tmp_path / "data"), 16, caption_column="caption")
    assert [data[i]["captions"] for i in range(3)] == CAPTIONS[:3]


def test_missing_caption_column_names_column_and_file(tmp_path):
    folder = write_metadata_folder(str(tmp_path / "d"), 2)
    with pytest.raises(ValueError, match=r"caption column 'prompt' is missing") as err:
        load_captioned_dataset(folder, 16, caption_column="prompt")
    assert "metadata.jsonl line 1" in str(err.value)


def test_unreadable_image_names_the_file(tmp_path):
    folder = write_kohya_folder(str(tmp_path / "d"), 2)
    with open(os.path.join(folder, "001.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ValueError, match=r"001\.png cannot be read"):
        load_captioned_dataset(folder, 16)


def test_image_without_caption_names_the_file(tmp_path):
    folder = write_kohya_folder(str(tmp_path / "k"), 2)
    _image(9).save(os.path.join(folder, "lonely.png"))
    with pytest.raises(ValueError, match=r"lonely\.png has no caption file"):
        load_captioned_dataset(folder, 16)
    folder = write_metadata_folder(str(tmp_path / "m"), 2)
    _image(9).save(os.path.join(folder, "extra.png"))
    with pytest.raises(ValueError, match=r"extra\.png has no entry in metadata\.jsonl"):
        load_captioned_dataset(folder, 16)


def test_bad_metadata_lines_are_named(tmp_path):
    folder = write_metadata_folder(str(tmp_path / "d"), 1)
    path = os.path.join(folder, "metadata.jsonl")
    for line, pattern in (
        (json.dumps({"file_name": "gone.png", "text": "x"}), r"do not exist: .*gone\.png"),
        (json.dumps({"text": "x"}), r"line 2 has no 'file_name'"),
        (json.dumps({"file_name": "../000.png", "text": "x"}), r"line 2: file_name '\.\./000\.png'"),
        (json.dumps({"file_name": "000.png", "text": 5}), r"line 2: caption column 'text' holds int"),
        ("{broken", r"line 2 is not JSON"),
    ):
        with open(path, "w") as f:
            f.write(json.dumps({"file_name": "000.png", "text": "a cat"}) + "\n" + line + "\n")
        with pytest.raises(ValueError, match=pattern):
            load_captioned_dataset(folder, 16)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="caption_column"):
        load_captioned_dataset(write_kohya_folder(str(tmp_path / "k"), 1), 16, caption_column="")
    with pytest.raises(ValueError, match="not an existing folder"):
        load_captioned_dataset(str(tmp_path / "nowhere"), 16)
    with pytest.raises(ValueError, match="no captioned images"):
        os.makedirs(tmp_path / "empty")
        load_captioned_dataset(str(tmp_path / "empty"), 16)


def test_datasets_dataset_with_columns_and_its_errors():
    datasets = pytest.importorskip("datasets")
    rows = {"picture": [_image(i, 24) for i in range(3)], "prompt": CAPTIONS[:3]}
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"picture": datasets.Image(), "prompt": datasets.Value("string")}))  # fmt: skip
    data = load_captioned_dataset(ds, 16, caption_column="prompt", image_column="picture")
    assert data[1]["captions"] == CAPTIONS[1] and data[1]["images"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="caption_column 'text' not found"):
        load_captioned_dataset(ds, 16)
    with pytest.raises(ValueError, match="image_column 'img' not found"):
        load_captioned_dataset(ds, 16, caption_column="prompt", image_column="img")
    bad = datasets.Dataset.from_dict({"picture": rows["picture"], "prompt": ["a", None, "c"]}, features=ds.features)
    with pytest.raises(ValueError, match=r"row 1 of caption_column 'prompt'"):
        load_captioned_dataset(bad, 16, caption_column="prompt")


def test_captioned_digits_by_name():
    try:
        from torchdiffusion.training import captioned_digits  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="captioned-digits"):
            load_captioned_dataset("captioned-digits", 32)
        return
    data = load_captioned_dataset("captioned-digits", 32)
    assert isinstance(data[0]["captions"], str) and data[0]["images"].shape == (3, 32, 32)

