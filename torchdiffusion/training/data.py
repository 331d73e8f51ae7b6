"""Training data: image folders, Hugging Face data sets (:mod:`.hub_data`), the embedded ``digits`` set, PIL +
torch transforms, and the deterministic order in which a run (on one process or many) visits them.

Every item is a dict ``{"images": (C, H, W) float tensor in [-1, 1], "labels": int}`` (``labels`` is ``-1``
for unlabelled data). The order is a pure function of ``(seed, position)``: position ``p`` of the run's
endless stream is item ``perm_e[p % N]`` of epoch ``e = p // N``, and its augmentation (crop, flip) is seeded by
``(seed, p)``. So a run resumed at any step, or split over any number of processes, sees the same images.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
"""File name endings an image folder is searched for (case-insensitive)."""

EMBEDDED_DATASETS: tuple[str, ...] = ("digits", "captioned-digits")


def mix_seed(*parts: Any) -> int:
    """A 63-bit seed from any ints/strings (stable across runs and machines, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ---- transforms -----------------------------------------------------------------------------------------------
class ImageTransform:
    """PIL image -> ``(channels, resolution, resolution)`` tensor in [-1, 1].

    Steps: convert to ``"L"`` (1 channel) or ``"RGB"`` (3); resize so the shorter side is ``resolution``;
    crop the centre (``center_crop=True``) or a random square; flip left-right with probability 0.5 when
    ``random_flip``; scale to [-1, 1]. Random choices come from ``generator`` (or torch's global RNG).
    """

    def __init__(self, resolution: int, channels: int = 3, center_crop: bool = True, random_flip: bool = False):
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        self.resolution, self.channels = resolution, channels
        self.center_crop, self.random_flip = bool(center_crop), bool(random_flip)

    @property
    def is_random(self) -> bool:
        """True when the output depends on the generator (random crops or flips)."""
        return not self.center_crop or self.random_flip

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        from PIL import Image

        if image.mode not in ("L", "RGB"):
            # palette / alpha images: composite on white so transparent areas do not turn black
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image)
        image = image.convert("L" if self.channels == 1 else "RGB")
        r = self.resolution
        w, h = image.size
        scale = r / min(w, h)
        size = (max(r, round(w * scale)), max(r, round(h * scale)))
        if size != (w, h):
            image = image.resize(size, resample=Image.Resampling.BICUBIC, reducing_gap=3.0 if scale < 0.5 else None)
        w, h = image.size
        if self.center_crop:
            left, top = (w - r) // 2, (h - r) // 2
        else:
            left = int(torch.randint(0, w - r + 1, (1,), generator=generator))
            top = int(torch.randint(0, h - r + 1, (1,), generator=generator))
        if (w, h) != (r, r):
            image = image.crop((left, top, left + r, top + r))
        array = np.asarray(image, dtype=np.float32)
        tensor = torch.from_numpy(array.copy()).reshape(r, r, self.channels).permute(2, 0, 1)
        if self.random_flip and float(torch.rand((), generator=generator)) < 0.5:
            tensor = tensor.flip(-1)
        return tensor / 127.5 - 1.0


def _generator_for(key: Any) -> tuple[int, torch.Generator | None]:
    """``dataset[i]`` or ``dataset[(i, seed)]`` -> index and the augmentation generator (None: global RNG)."""
    if isinstance(key, tuple):
        index, seed = key
        return int(index), torch.Generator().manual_seed(int(seed))
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key), None
    raise TypeError(f"dataset index must be an int or (int, seed), got {type(key).__name__}")


class TrainingDataset(torch.utils.data.Dataset):
    """Base of the training data sets: ``len``, ``ds[i]`` / ``ds[(i, seed)]``, ``num_classes``, ``channels``."""

    num_classes: int = 0  # 0: unlabelled
    channels: int = 3
    resolution: int = 0
    class_names: list[str] | None = None

    @property
    def random_augmentation(self) -> bool:
        """True when an item depends on its augmentation seed (random crop or flip): its image cannot be cached."""
        transform = getattr(self, "transform", None)
        if isinstance(transform, ImageTransform):
            return transform.is_random
        return bool(getattr(self, "random_flip", False))

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a data set of {n} images")
        return index % n


class DigitsDataset(TrainingDataset):
    """scikit-learn's real handwritten digits (1,797 8x8 grayscale images, labels 0-9), upscaled to ``resolution``.

    Needs no download (the data ship inside scikit-learn). Images are held in memory as ``(N, C, R, R)``.
    ``random_flip`` is off by default (a flipped digit is another glyph).
    """

    num_classes = 10
    class_names = [str(i) for i in range(10)]

    def __init__(self, resolution: int = 16, channels: int = 1, random_flip: bool = False) -> None:
        ImageTransform(resolution, channels)  # validates resolution / channels
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:  # pragma: no cover - sklearn is part of the train extra
            raise ImportError("the 'digits' data set needs scikit-learn: pip install scikit-learn") from err
        digits = load_digits()
        x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
        self.images = (x.clamp(0, 1) * 2 - 1).expand(-1, channels, -1, -1).contiguous()
        self.labels = torch.from_numpy(digits.target.astype(np.int64))
        self.resolution, self.channels, self.random_flip = resolution, channels, random_flip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, generator = _generator_for(key)
        index = self._check_index(index)
        image = self.images[index]
        if self.random_flip and float(torch.rand((), generator=generator)) < 0.5:
            image = image.flip(-1)
        return {"images": image, "labels": int(self.labels[index])}


def find_images(root: str | os.PathLike) -> list[str]:
    """All image files under ``root`` (recursive, sorted, hidden files and folders skipped)."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(folder, f)
            for f in sorted(files)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def _readable(path: str) -> str | None:
    """None if ``path`` opens as an image, else the reason it does not."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except Exception as err:  # PIL raises many types for broken files
        return f"{type(err).__name__}: {err}"


class ImageFolderDataset(TrainingDataset):
    """Every png/jpg/jpeg/webp image under ``root`` (recursive; grayscale or RGB).

    With ``labels=True`` the first-level subfolder names are the classes (the ``imagefolder`` layout:
    ``root/cat/1.png``, ``root/dog/2.png``). Files that do not open as images are skipped with a warning naming
    them; a folder with no image is a ``ValueError``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int,
        channels: int = 3,
        center_crop: bool = True,
        random_flip: bool = False,
        labels: bool = False,
    ) -> None:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"dataset folder {root!r} does not exist or is not a folder")
        self.transform = ImageTransform(resolution, channels, center_crop, random_flip)
        self.root, self.resolution, self.channels = root, resolution, channels
        paths = []
        for path in find_images(root):
            reason = _readable(path)
            if reason is None:
                paths.append(path)
            else:
                warnings.warn(f"skipping corrupt image file {path} ({reason})", stacklevel=2)
        if not paths:
            raise ValueError(
                f"dataset folder {root!r} contains no readable images (searched recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        self.paths = paths
        self.targets: list[int] | None = None
        if labels:
            names = [os.path.relpath(p, root).split(os.sep)[0] for p in paths]
            if any(os.sep not in os.path.relpath(p, root) for p in paths):
                raise ValueError(
                    f"labels=True needs one subfolder per class in {root!r} (root/<class>/<image>); "
                    "some images lie directly in the root"
                )
            self.class_names = sorted(set(names))
            index = {name: i for i, name in enumerate(self.class_names)}
            self.targets = [index[n] for n in names]
            self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        from PIL import Image

        index, generator = _generator_for(key)
        index = self._check_index(index)
        for attempt in range(len(self.paths)):  # a file that broke after the scan: warn, take the next one
            i = (index + attempt) % len(self.paths)
            try:
                with Image.open(self.paths[i]) as im:
                    image = self.transform(im, generator)
                break
            except Exception as err:
                warnings.warn(f"skipping corrupt image file {self.paths[i]} ({type(err).__name__}: {err})")
        else:
            raise ValueError(f"no image under {self.root!r} could be read")
        return {"images": image, "labels": self.targets[i] if self.targets is not None else -1}


# ---- the order of a run ---------------------------------------------------------------------------------------
class BatchPlan:
    """Which items each process loads for micro-batch ``m`` of a run: a deterministic endless stream.

    ``global_batch = micro_batch_size * world_size`` items per micro-batch; process ``rank`` takes its slice.
    Item keys are ``(index, augmentation_seed)`` tuples for :class:`TrainingDataset`.
    """

    def __init__(self, num_items: int, micro_batch_size: int, seed: int, world_size: int = 1, rank: int = 0):
        if num_items < 1:
            raise ValueError(f"the data set is empty (num_items={num_items})")
        self.num_items, self.micro_batch_size, self.seed = num_items, micro_batch_size, seed
        self.world_size, self.rank = world_size, rank
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(mix_seed(self.seed, "epoch", epoch))
            self._perms = {epoch: torch.randperm(self.num_items, generator=g).tolist()}  # keep one epoch
        return self._perms[epoch]

    def keys(self, micro_step: int) -> list[tuple[int, int]]:
        """Dataset keys of this process's part of micro-batch ``micro_step``."""
        start = (micro_step * self.world_size + self.rank) * self.micro_batch_size
        out = []
        for p in range(start, start + self.micro_batch_size):
            epoch, offset = divmod(p, self.num_items)
            out.append((self._perm(epoch)[offset], mix_seed(self.seed, "aug", p)))
        return out

    def epoch_of(self, micro_step: int) -> float:
        """Epochs seen after ``micro_step`` micro-batches (all processes together)."""
        return micro_step * self.world_size * self.micro_batch_size / self.num_items


class _PlanSampler(torch.utils.data.Sampler):
    def __init__(self, plan: BatchPlan, start: int) -> None:
        self.plan, self.start = plan, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        m = self.start
        while True:
            yield self.plan.keys(m)
            m += 1


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """List of items -> a batch: tensors stacked (``"images"``: (B, C, H, W)), ints as a (B,) long tensor
    (``"labels"``), anything else (``"captions"``) as a list."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (int, np.integer)) and not isinstance(values[0], bool):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch


def iterate_batches(
    dataset: torch.utils.data.Dataset, plan: BatchPlan, start: int = 0, num_workers: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches ``start, start+1, ...`` of ``plan`` for this process, loaded by ``num_workers`` workers."""
    if num_workers == 0:
        m = start
        while True:
            yield collate([dataset[k] for k in plan.keys(m)])
            m += 1
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_PlanSampler(plan, start), num_workers=num_workers, collate_fn=collate
    )
    yield from loader
