"""Captioned images for text-to-image training, the way people keep them:

* a folder with ``metadata.jsonl`` (the ``imagefolder`` convention: one JSON object per line with ``file_name``
  and a caption column, e.g. ``{"file_name": "0001.png", "text": "a red fox"}``; in the folder or a subfolder);
* a folder of ``name.png`` + ``name.txt`` pairs (kohya's convention: the text file holds the caption);
* a ``datasets.Dataset`` with an image and a caption column (:class:`~.hub_data.HubImageDataset` with
  ``caption_column``).

Every rule is checked when the data set is built, before a training step: a caption column that is missing, an
image that does not open, an image without a caption (or a caption without an image) raise ``ValueError`` naming
the file or column. Items are ``{"images": (C, R, R) in [-1, 1], "labels": -1, "captions": str}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .data import IMAGE_EXTENSIONS, ImageTransform, TrainingDataset, _generator_for, _readable, find_images

METADATA_FILE = "metadata.jsonl"


def _check_caption(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: caption column {column!r} holds {type(value).__name__} {value!r:.60}, not text")
    return value


def read_metadata(path: str, caption_column: str) -> dict[str, str]:
    """``metadata.jsonl`` at ``path`` -> {image path (joined to its folder): caption}; ``ValueError`` naming the
    file and line for a bad line, a missing ``file_name`` or ``caption_column``."""
    folder, pairs = os.path.dirname(path), {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where} is not JSON: {err}") from None
            if not isinstance(row, dict) or "file_name" not in row:
                raise ValueError(f"{where} has no 'file_name' key")
            if caption_column not in row:
                raise ValueError(
                    f"{where}: caption column {caption_column!r} is missing (keys: {sorted(row)}); "
                    "pass caption_column=<one of them>"
                )
            name = row["file_name"]
            if not isinstance(name, str) or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
                raise ValueError(f"{where}: file_name {name!r} must be a relative path inside the folder")
            pairs[os.path.normpath(os.path.join(folder, name))] = _check_caption(row[caption_column], where,
                                                                                caption_column)  # fmt: skip
    return pairs


def folder_captions(root: str, caption_column: str = "text") -> dict[str, str]:
    """{image path: caption} for a folder with ``metadata.jsonl`` file(s), else for ``name.png`` + ``name.txt``
    pairs. ``ValueError`` naming the file for an image without a caption or a listed image that is missing."""
    images = [os.path.normpath(p) for p in find_images(root)]
    metadata = sorted(os.path.join(d, METADATA_FILE) for d, _, files in os.walk(root) if METADATA_FILE in files)
    captions: dict[str, str] = {}
    if metadata:
        for path in metadata:
            captions.update(read_metadata(path, caption_column))
        missing = sorted(p for p in captions if not os.path.isfile(p))
        if missing:
            raise ValueError(f"{metadata[0]} lists image file(s) that do not exist: {missing[:5]}")
    else:
        for path in images:
            text = os.path.splitext(path)[0] + ".txt"
            if os.path.isfile(text):
                with open(text, encoding="utf-8") as f:
                    captions[path] = f.read().strip()
    unlabelled = [p for p in images if p not in captions]
    if unlabelled:
        how = f"no entry in {METADATA_FILE}" if metadata else "no caption file <name>.txt next to it"
        raise ValueError(f"image {unlabelled[0]} has {how} ({len(unlabelled)} image(s) without a caption)")
    return captions


class CaptionedImageFolder(TrainingDataset):
    """Captioned images in a folder (``metadata.jsonl`` or ``name.txt`` pairs, see the module docstring).

    ``caption_column``: the caption key of ``metadata.jsonl`` (default ``"text"``). Every image is opened once
    here: one that does not read is a ``ValueError`` naming it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int,
        caption_column: str = "text",
        center_crop: bool = True,
        random_flip: bool = False,
        channels: int = 3,
    ) -> None:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"dataset folder {root!r} does not exist or is not a folder")
        if not isinstance(caption_column, str) or not caption_column:
            raise ValueError(f"caption_column must be a non-empty string, got {caption_column!r}")
        self.transform = ImageTransform(resolution, channels, center_crop, random_flip)
        self.root, self.resolution, self.channels = root, resolution, channels
        pairs = folder_captions(root, caption_column)
        if not pairs:
            raise ValueError(
                f"dataset folder {root!r} has no captioned images ({', '.join(IMAGE_EXTENSIONS)} files with a "
                f"{METADATA_FILE} or <name>.txt captions)"
            )
        for path in sorted(pairs):
            reason = _readable(path)
            if reason is not None:
                raise ValueError(f"image file {path} cannot be read ({reason})")
        self.paths = sorted(pairs)
        self.captions = [pairs[p] for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        from PIL import Image

        index, generator = _generator_for(key)
        index = self._check_index(index)
        try:
            with Image.open(self.paths[index]) as im:
                image = self.transform(im, generator)
        except Exception as err:  # the file changed since the scan
            raise ValueError(f"image file {self.paths[index]} cannot be read ({type(err).__name__}: {err})") from err
        return {"images": image, "labels": -1, "captions": self.captions[index]}
