"""Hugging Face ``datasets`` sources for training: ``imagefolder`` (offline), Dataset / DatasetDict objects
passed in directly, ClassLabel labels, and a clear error for a Hub name that cannot be loaded offline."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from torchdiffusion.training.data import BatchPlan, ImageFolderDataset, iterate_batches
from torchdiffusion.training.hub_data import HubImageDataset
from torchdiffusion.training.sources import load_training_dataset

datasets = pytest.importorskip("datasets")


def _image(seed, size=(10, 12), mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode)


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "pets"
    for name, seeds in (("cat", (1, 2, 3)), ("dog", (4, 5))):
        os.makedirs(root / name)
        for s in seeds:
            _image(s).save(root / name / f"{s}.png")
    return root


def test_imagefolder_offline_with_classlabel(class_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = load_training_dataset(
        "imagefolder", 8, labels=True, random_flip=False, data_dir=str(class_folder), cache_dir=str(tmp_path / "c")
    )
    assert isinstance(ds, HubImageDataset) and len(ds) == 5
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2 and ds.label_column == "label"
    items = [ds[i] for i in range(len(ds))]
    assert all(it["images"].shape == (3, 8, 8) for it in items)
    assert sorted(it["labels"] for it in items) == [0, 0, 0, 1, 1]
    # the same pixels as our own folder reader (same transform), whatever the row order
    ours = ImageFolderDataset(class_folder, 8, labels=True)
    key = lambda it: (it["labels"], round(float(it["images"].sum()), 3))  # noqa: E731
    got = sorted(items, key=key)
    want = sorted((ours[i] for i in range(len(ours))), key=key)
    for a, b in zip(got, want):
        assert a["labels"] == b["labels"]
        torch.testing.assert_close(a["images"], b["images"])
    batch = next(iterate_batches(ds, BatchPlan(len(ds), micro_batch_size=4, seed=0)))
    assert batch["images"].shape == (4, 3, 8, 8) and batch["labels"].dtype == torch.long
    unlabelled = load_training_dataset("imagefolder", 8, data_dir=str(class_folder), cache_dir=str(tmp_path / "c"))
    assert unlabelled.num_classes == 0 and unlabelled[0]["labels"] == -1


def _labelled(n=4):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    return datasets.Dataset.from_dict(
        {"image": [_image(i, mode="L") for i in range(n)], "label": [i % 3 for i in range(n)]}, features=features
    )


def test_dataset_object_passed_in_directly():
    data = _labelled()
    ds = load_training_dataset(data, 6, channels=1, labels=True, random_flip=False)
    assert ds.class_names == ["a", "b", "c"] and ds.num_classes == 3 and len(ds) == 4
    assert [ds[i]["labels"] for i in range(4)] == [0, 1, 2, 0]
    image = ds[1]["images"]
    assert image.shape == (1, 6, 6) and -1 <= image.min() and image.max() <= 1
    # a DatasetDict: `split` picks the part
    both = datasets.DatasetDict({"train": data, "test": data.select([0])})
    assert len(load_training_dataset(both, 6, split="test")) == 1
    with pytest.raises(ValueError, match="validation"):
        load_training_dataset(both, 6, split="validation")
    # augmentation follows the (index, seed) key, as for the other sources: each key gives the plain image or its
    # mirror image, both occur, and the same key gives the same pixels from another dataset object
    flip = load_training_dataset(data, 6, random_flip=True)
    plain = load_training_dataset(data, 6, random_flip=False)[2]["images"]
    assert not torch.equal(plain, plain.flip(-1))
    mirrored = []
    for seed in range(16):
        got = flip[(2, seed)]["images"]
        assert torch.equal(got, plain) or torch.equal(got, plain.flip(-1))
        mirrored.append(not torch.equal(got, plain))
    assert any(mirrored) and not all(mirrored)
    again = load_training_dataset(data, 6, random_flip=True)
    assert all(torch.equal(again[(2, s)]["images"], flip[(2, s)]["images"]) for s in range(16))


def test_labels_need_a_classlabel_column():
    data = datasets.Dataset.from_dict({"image": [_image(0), _image(1)], "label": [0, 1]})
    data = data.cast_column("image", datasets.Image())
    with pytest.raises(ValueError, match="ClassLabel"):
        load_training_dataset(data, 8, labels=True)
    assert load_training_dataset(data, 8)[1]["labels"] == -1  # unlabelled use is fine
    with pytest.raises(ValueError, match="label_column 'nope'"):
        load_training_dataset(data, 8, labels=True, label_column="nope")


def test_other_image_cell_types_and_columns():
    arrays = datasets.Dataset.from_dict({"pixels": [np.asarray(_image(3)), np.asarray(_image(4))]})
    with pytest.raises(ValueError, match="image_column"):
        load_training_dataset(arrays, 8)  # no Image feature: the column must be named
    ds = load_training_dataset(arrays, 8, image_column="pixels", random_flip=False)
    assert ds[0]["images"].shape == (3, 8, 8)
    raw = _labelled(2).cast_column("image", datasets.Image(decode=False))  # {"bytes", "path"} cells
    decoded = load_training_dataset(_labelled(2), 8, channels=1, random_flip=False)
    undecoded = load_training_dataset(raw, 8, channels=1, random_flip=False)
    torch.testing.assert_close(undecoded[1]["images"], decoded[1]["images"])
    with pytest.raises(ValueError, match="image_column 'img'"):
        load_training_dataset(_labelled(), 8, image_column="img")


def test_bad_sources(tmp_path):
    with pytest.raises(TypeError, match="streaming"):
        load_training_dataset(_labelled().to_iterable_dataset(), 8)
    with pytest.raises(TypeError, match="data_dir"):
        load_training_dataset(_labelled(), 8, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data_dir"):
        load_training_dataset("imagefolder", 8, data_dir=str(tmp_path / "missing"))
    empty = _labelled().select([])
    with pytest.raises(ValueError, match="empty"):
        load_training_dataset(empty, 8)


def test_hub_name_offline_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises((ConnectionError, FileNotFoundError), match="HF_HUB_OFFLINE|imagefolder"):
        load_training_dataset("someone/no-such-dataset", 8, cache_dir=str(tmp_path))
