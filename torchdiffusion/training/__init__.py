"""Training: data, the Trainer (one process or many, via ``accelerate``), EMA, losses, checkpoints, metrics.

Importing this package is cheap; ``accelerate`` is imported when training starts.
"""

from __future__ import annotations

from .config import TrainingConfig
from .data import (
    DigitsDataset,
    ImageFolderDataset,
    ImageTransform,
    TrainingDataset,
)
from .ema import EMAModel
from .hub_data import HubImageDataset
from .metrics import DigitsYardstick, fid, frechet_distance
from .sources import load_training_dataset
from .trainer import Trainer, TrainingResult

__all__ = [
    "DigitsDataset",
    "DigitsYardstick",
    "EMAModel",
    "HubImageDataset",
    "ImageFolderDataset",
    "ImageTransform",
    "Trainer",
    "TrainingConfig",
    "TrainingDataset",
    "TrainingResult",
    "fid",
    "frechet_distance",
    "load_training_dataset",
]
