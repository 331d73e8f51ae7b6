import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from torchdiffusion.training.data import (
    BatchPlan,
    DigitsDataset,
    ImageFolderDataset,
    ImageTransform,
    iterate_batches,
)
from torchdiffusion.training.sources import load_training_dataset


def _write(path, size=(20, 12), mode="RGB", fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(len(path))
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(path, format=fmt)


@pytest.mark.parametrize("resolution", [16, 32])
def test_digits(resolution):
    ds = DigitsDataset(resolution)
    assert len(ds) == 1797 and ds.num_classes == 10 and ds.channels == 1
    item = ds[0]
    assert item["images"].shape == (1, resolution, resolution)
    assert -1 <= item["images"].min() and item["images"].max() <= 1 and item["images"].max() > 0.5
    assert item["labels"] == 0
    assert load_training_dataset("digits", resolution).resolution == resolution


def test_folder_recursive_formats_and_modes(tmp_path):
    _write(str(tmp_path / "a.png"))
    _write(str(tmp_path / "sub" / "b.JPG"), mode="L", fmt="JPEG")
    _write(str(tmp_path / "sub" / "deeper" / "c.webp"), fmt="WEBP")
    _write(str(tmp_path / "sub" / "notes.txt.png"), mode="L")
    (tmp_path / "readme.txt").write_text("not an image")
    ds = load_training_dataset(str(tmp_path), 8)
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 4
    for i in range(len(ds)):
        x = ds[i]["images"]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
    gray = ImageFolderDataset(str(tmp_path), 8, channels=1)
    assert gray[1]["images"].shape == (1, 8, 8)


def test_corrupt_file_is_skipped_with_a_warning_naming_it(tmp_path):
    _write(str(tmp_path / "good.png"))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(UserWarning, match="broken.png"):
        ds = ImageFolderDataset(str(tmp_path), 8)
    assert len(ds) == 1


def test_file_broken_after_scan_is_skipped_at_load(tmp_path):
    _write(str(tmp_path / "a.png"))
    _write(str(tmp_path / "b.png"))
    ds = ImageFolderDataset(str(tmp_path), 8)
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="a.png"):
        item = ds[0]
    assert item["images"].shape == (3, 8, 8)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    with pytest.raises(ValueError, match="contains no readable images"):
        load_training_dataset(str(tmp_path / "empty"), 8)
    with pytest.raises(ValueError, match="dataset"):
        load_training_dataset(str(tmp_path / "nope"), 8)
    with pytest.raises(ValueError, match="dataset folder"):
        ImageFolderDataset(str(tmp_path / "nope"), 8)
    with pytest.raises(TypeError, match="dataset"):
        load_training_dataset(3, 8)


def test_hub_name_without_datasets_package_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed: import fails
    with pytest.raises(ImportError, match="datasets"):
        load_training_dataset("huggan/smithsonian_butterflies_subset", 8)


def test_folder_labels_from_subfolders(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(2):
            _write(str(tmp_path / cls / f"{i}.png"))
    ds = ImageFolderDataset(str(tmp_path), 8, labels=True)
    assert ds.num_classes == 2 and ds.class_names == ["cat", "dog"]
    assert [ds[i]["labels"] for i in range(4)] == [0, 0, 1, 1]
    _write(str(tmp_path / "loose.png"))
    with pytest.raises(ValueError, match="labels"):
        ImageFolderDataset(str(tmp_path), 8, labels=True)


def test_transform_resize_crop_flip():
    image = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1)))  # 40 wide, 20 high, ramp
    center = ImageTransform(10, channels=1)(image)
    assert center.shape == (1, 10, 10)
    assert center[0, 0, 0] < center[0, 0, -1]  # ramp kept left to right
    t = ImageTransform(10, channels=1, center_crop=False, random_flip=True)
    a = t(image, torch.Generator().manual_seed(3))
    b = t(image, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    outs = {tuple(t(image, torch.Generator().manual_seed(s))[0, 0].tolist()) for s in range(12)}
    assert len(outs) > 2  # crops and flips vary with the seed
    rgba = Image.new("RGBA", (12, 12), (0, 0, 0, 0))
    assert ImageTransform(4)(rgba).min() == 1.0  # transparent -> white


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"resolution": 0}, "resolution"),
        ({"resolution": 8, "channels": 2}, "channels"),
        ({"resolution": 1.5}, "resolution"),
    ],
)
def test_transform_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ImageTransform(**kwargs)


def test_batch_plan_is_deterministic_and_split_across_ranks():
    one = BatchPlan(10, 4, seed=1)
    assert one.keys(0) == BatchPlan(10, 4, seed=1).keys(0)
    assert one.keys(0) != BatchPlan(10, 4, seed=2).keys(0)
    # the stream crosses epochs: each epoch is a permutation
    stream = [k for m in range(5) for k in one.keys(m)]
    assert sorted(i for i, _ in stream[:10]) == list(range(10))
    assert sorted(i for i, _ in stream[10:20]) == list(range(10))
    # two processes with half the batch each see the same global batches
    r0, r1 = BatchPlan(10, 2, 1, world_size=2, rank=0), BatchPlan(10, 2, 1, world_size=2, rank=1)
    for m in range(5):
        assert r0.keys(m) + r1.keys(m) == one.keys(m)


def test_iterate_batches_resumes_mid_stream():
    ds = DigitsDataset(8)
    plan = BatchPlan(len(ds), 3, seed=0)
    full = iterate_batches(ds, plan, 0)
    batches = [next(full) for _ in range(4)]
    resumed = next(iterate_batches(ds, plan, 3))
    assert torch.equal(resumed["images"], batches[3]["images"]) and torch.equal(resumed["labels"], batches[3]["labels"])
    assert batches[0]["images"].shape == (3, 1, 8, 8) and batches[0]["labels"].dtype == torch.long


def test_dataloader_workers_give_the_same_batches(tmp_path):
    for i in range(5):
        _write(str(tmp_path / f"{i}.png"))
    ds = ImageFolderDataset(str(tmp_path), 8, center_crop=False, random_flip=True)
    plan = BatchPlan(len(ds), 2, seed=0)
    a = iterate_batches(ds, plan, 1, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = iterate_batches(ds, plan, 1, num_workers=1)
        for _ in range(3):
            assert torch.equal(next(a)["images"], next(b)["images"])
