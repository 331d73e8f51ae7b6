"""Hugging Face ``datasets`` sources for training: Hub names, ``imagefolder`` with ``data_dir``, and
``datasets.Dataset`` / ``DatasetDict`` objects. ``datasets`` (an optional extra) is imported only when one is built.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .data import EMBEDDED_DATASETS, ImageTransform, TrainingDataset, _generator_for


def _to_pil(value: Any, column: str) -> Any:
    """A data set cell -> PIL image: PIL images as they are; ``uint8``/float arrays; ``{"bytes"|"path"}`` dicts
    (an ``Image(decode=False)`` column)."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        import io

        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as im:
            return im.copy()
    if isinstance(value, (np.ndarray, list)):
        array = np.asarray(value)
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        return Image.fromarray(array)
    raise TypeError(f"image_column {column!r} holds {type(value).__name__} values; expected PIL images or arrays")


class HubImageDataset(TrainingDataset):
    """A Hugging Face ``datasets`` data set: a Hub name such as ``"huggan/smithsonian_butterflies_subset"``,
    ``"imagefolder"`` with ``data_dir`` (a local folder, read offline), or a ``datasets.Dataset`` /
    ``DatasetDict`` object (``split`` picks from a dict). Needs the optional ``datasets`` package for names,
    imported only here.

    ``image_column``/``label_column`` default to the first image feature and a ``ClassLabel`` column (if any);
    the class names are the ``ClassLabel`` names. ``caption_column`` (text-to-image training) adds each row's
    caption to its item as ``"captions"`` (every caption is checked to be text here).
    """

    def __init__(
        self,
        name: Any,
        resolution: int,
        channels: int = 3,
        center_crop: bool = True,
        random_flip: bool = False,
        labels: bool = False,
        split: str = "train",
        data_dir: str | None = None,
        image_column: str | None = None,
        label_column: str | None = None,
        caption_column: str | None = None,
        **load_kwargs: Any,
    ) -> None:
        try:
            import datasets
        except ImportError as err:
            raise ImportError(
                f"dataset {name!r} is not a folder or an embedded data set ({', '.join(EMBEDDED_DATASETS)}); loading "
                "it from the Hugging Face Hub needs the optional `datasets` package: "
                "pip install 'torchdiffusion[datasets]'"
            ) from err
        self.transform = ImageTransform(resolution, channels, center_crop, random_flip)
        self.resolution, self.channels = resolution, channels
        if isinstance(name, str):
            if not name.strip():
                raise ValueError("dataset name must be a non-empty string")
            self.data = _load_hf_dataset(datasets, name, data_dir, split, load_kwargs)
            label = repr(name)
        else:
            if data_dir is not None or load_kwargs:
                given = ["data_dir"] * (data_dir is not None) + sorted(load_kwargs)
                raise TypeError(f"{', '.join(given)}: only used when the dataset is given by name, not as an object")
            self.data = name
            label = f"given as a {type(name).__name__}"
        if isinstance(self.data, datasets.DatasetDict):
            if split not in self.data:
                raise ValueError(f"split {split!r} is not in the dataset {label}; it has {sorted(self.data)}")
            self.data = self.data[split]
        if not isinstance(self.data, datasets.Dataset):
            raise TypeError(
                f"dataset {label} is a {type(self.data).__name__}; training needs a map-style datasets.Dataset "
                "(len() and [index]); load it without streaming=True"
            )
        features = self.data.features
        if image_column is None:
            image_column = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
            if image_column is None:
                raise ValueError(
                    f"dataset {label} has no Image column (columns: {list(features)}); pass image_column=<name>"
                )
        if image_column not in features:
            raise ValueError(f"image_column {image_column!r} not found; the data set has columns {list(features)}")
        self.image_column = image_column
        self.label_column = None
        if labels:
            if label_column is None:
                label_column = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
            if label_column not in features or not isinstance(features[label_column], datasets.ClassLabel):
                raise ValueError(
                    f"label_column {label_column!r}: class-conditional training needs a ClassLabel column; "
                    f"columns are {list(features)} (turn an int column into one with "
                    "dataset.cast_column(name, datasets.ClassLabel(names=[...])))"
                )
            self.label_column = label_column
            self.class_names = list(features[label_column].names)
            self.num_classes = len(self.class_names)
        if len(self.data) == 0:
            raise ValueError(f"dataset {label} split {split!r} is empty")
        self.caption_column = caption_column
        if caption_column is not None:
            if caption_column not in features:
                raise ValueError(
                    f"caption_column {caption_column!r} not found; the data set has columns {list(features)}"
                )
            for row, text in enumerate(self.data[caption_column]):  # one column read: cheap, before any step
                if not isinstance(text, str):
                    raise ValueError(f"row {row} of caption_column {caption_column!r} holds {text!r:.60}, not text")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, generator = _generator_for(key)
        row = self.data[self._check_index(index)]
        try:
            image = self.transform(_to_pil(row[self.image_column], self.image_column), generator)
        except (OSError, ValueError) as err:
            raise ValueError(f"row {index} of image_column {self.image_column!r} cannot be read ({err})") from err
        if self.caption_column is not None:
            return {"images": image, "labels": -1, "captions": row[self.caption_column]}
        if self.label_column is None:
            return {"images": image, "labels": -1}
        label = row[self.label_column]
        if label is None or not 0 <= int(label) < self.num_classes:
            raise ValueError(f"row {index} of the dataset has label {label!r}, outside 0..{self.num_classes - 1}")
        return {"images": image, "labels": int(label)}


def _load_hf_dataset(datasets: Any, name: str, data_dir: str | None, split: str, load_kwargs: dict) -> Any:
    """``datasets.load_dataset`` with errors that say what to do (offline mode, unknown name)."""
    if data_dir is not None and not os.path.isdir(data_dir):
        raise ValueError(f"data_dir={data_dir!r} is not an existing folder")
    try:
        return datasets.load_dataset(name, data_dir=data_dir, split=split, **load_kwargs)
    except ConnectionError as err:
        raise ConnectionError(
            f"dataset {name!r} could not be loaded: it is not in the local datasets cache and the Hub cannot be "
            f"reached ({err}). With HF_HUB_OFFLINE=1 only cached data sets load; pass a local folder, or "
            "'imagefolder' with data_dir=<folder>"
        ) from err
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"dataset {name!r} was not found on the Hugging Face Hub or locally ({err}); pass a local folder of "
            "images, or 'imagefolder' with data_dir=<folder>"
        ) from err
