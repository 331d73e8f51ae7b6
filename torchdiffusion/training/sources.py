"""Where training images come from: ``load_training_dataset`` picks the data set for a source (the embedded
digits and captioned digits, a folder of images, a Hugging Face data set)."""

from __future__ import annotations

import os
from typing import Any

from .data import EMBEDDED_DATASETS, DigitsDataset, ImageFolderDataset, TrainingDataset
from .hub_data import HubImageDataset  # imports nothing heavy; `datasets` only when a Hub set is built


def _is_hf_dataset(obj: Any) -> bool:
    """True for a ``datasets.Dataset`` / ``DatasetDict`` / ``IterableDataset`` (without importing ``datasets``)."""
    return type(obj).__module__.split(".")[0] == "datasets"


def load_training_dataset(
    source: str | os.PathLike,
    resolution: int,
    channels: int | None = None,
    center_crop: bool = True,
    random_flip: bool | None = None,
    labels: bool = False,
    **hub_kwargs: Any,
) -> TrainingDataset:
    """Pick the data set for ``source``: ``"digits"``, ``"captioned-digits"`` (:mod:`.captioned_digits`, the
    training split at ``resolution``), a folder of images, a Hugging Face data set name
    (``"imagefolder"`` with ``data_dir=``...: ``hub_kwargs`` go to :class:`HubImageDataset`), or a
    ``datasets.Dataset`` / ``DatasetDict`` object.

    ``channels`` defaults to 1 for ``digits`` and 3 otherwise; ``random_flip`` to False for ``digits`` and True
    otherwise. ``labels=True`` returns class labels (``digits``: 0-9; folders: subfolder names; Hugging Face
    data sets: the ``ClassLabel`` column).
    """
    if _is_hf_dataset(source):
        flip = True if random_flip is None else bool(random_flip)
        return HubImageDataset(
            source, resolution, 3 if channels is None else channels, center_crop, flip, labels, **hub_kwargs
        )
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "dataset must be 'digits', a folder path, a Hub data set name or a datasets.Dataset, "
            f"got {type(source).__name__}"
        )
    source = os.fspath(source)
    if source == "captioned-digits" and not os.path.isdir(source):
        from .captioned_digits import CaptionedDigitsDataset  # coloured digits + captions (training split)

        return CaptionedDigitsDataset(resolution=resolution, channels=3 if channels is None else channels,
                                      random_flip=bool(random_flip))  # fmt: skip
    if source in EMBEDDED_DATASETS and not os.path.isdir(source):
        flip = bool(random_flip) if random_flip is not None else False
        return DigitsDataset(resolution, 1 if channels is None else channels, random_flip=flip)
    flip = True if random_flip is None else bool(random_flip)
    channels = 3 if channels is None else channels
    if os.path.isdir(source):
        return ImageFolderDataset(source, resolution, channels, center_crop, flip, labels)
    if source.startswith((".", "/", "~", "\\")) or os.path.exists(source):
        raise ValueError(f"dataset {source!r} is not an existing folder of images")
    return HubImageDataset(source, resolution, channels, center_crop, flip, labels, **hub_kwargs)


CAPTIONED_DIGITS = "captioned-digits"


def load_captioned_dataset(
    source: Any,
    resolution: int,
    caption_column: str | None = None,
    image_column: str | None = None,
    center_crop: bool = True,
    random_flip: bool = False,
    **hub_kwargs: Any,
) -> TrainingDataset:
    """Captioned images for text-to-image training (items with ``"captions"``): ``"captioned-digits"`` (the embedded
    set, when this build has it), a folder (``metadata.jsonl`` or ``name.txt`` pairs: :mod:`.captioned`), a
    ``datasets.Dataset`` / ``DatasetDict`` or a Hub name (``image_column`` / ``caption_column``; ``hub_kwargs`` go to
    :class:`HubImageDataset`). ``caption_column`` defaults to ``"text"``. Every caption and (for folders) every image
    is checked here: ``ValueError`` naming the file, row or column."""
    from .captioned import CaptionedImageFolder

    if caption_column is not None and (not isinstance(caption_column, str) or not caption_column):
        raise ValueError(f"caption_column must be a non-empty string, got {caption_column!r}")
    column = caption_column or "text"
    if _is_hf_dataset(source) or (isinstance(source, str) and not os.path.isdir(source) and source != CAPTIONED_DIGITS
                                  and not source.startswith((".", "/", "~", "\\")) and not os.path.exists(source)):
        return HubImageDataset(source, resolution, 3, center_crop, random_flip, image_column=image_column,
                               caption_column=column, **hub_kwargs)  # fmt: skip
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"dataset must be a folder path, a Hub name or a datasets.Dataset, got {type(source).__name__}")
    source = os.fspath(source)
    if source == CAPTIONED_DIGITS and not os.path.isdir(source):
        try:
            from . import captioned_digits  # the embedded captioned set (its own module, when present)
        except ImportError:
            raise ValueError(f"dataset {CAPTIONED_DIGITS!r} is not part of this build of torchdiffusion") from None
        return captioned_digits.CaptionedDigitsDataset(resolution=resolution)
    if not os.path.isdir(source):
        raise ValueError(f"dataset {source!r} is not an existing folder of captioned images")
    return CaptionedImageFolder(source, resolution, column, center_crop, random_flip)
