"""Training: data, the Trainer (one process or many, via ``accelerate``) and its tasks (pixel models, text-to-image
fine-tuning of Stable Diffusion, fully or with LoRA; LCM-LoRA distillation), EMA, losses, checkpoints, metrics.

Importing this package is cheap; ``accelerate`` is imported when training starts.
"""

from __future__ import annotations

from .captioned import CaptionedImageFolder
from .config import TrainingConfig
from .consistency import LatentConsistencyTask
from .data import (
    DigitsDataset,
    ImageFolderDataset,
    ImageTransform,
    TrainingDataset,
)
from .ema import EMAModel
from .hub_data import HubImageDataset
from .metrics import DigitsYardstick, fid, frechet_distance
from .sources import load_captioned_dataset, load_training_dataset
from .tasks import PixelTask
from .text_to_image import TextToImageTask
from .trainer import Trainer, TrainingResult

__all__ = [
    "CaptionedImageFolder",
    "DigitsDataset",
    "DigitsYardstick",
    "EMAModel",
    "HubImageDataset",
    "ImageFolderDataset",
    "ImageTransform",
    "LatentConsistencyTask",
    "PixelTask",
    "TextToImageTask",
    "Trainer",
    "TrainingConfig",
    "TrainingDataset",
    "TrainingResult",
    "fid",
    "frechet_distance",
    "load_captioned_dataset",
    "load_training_dataset",
]
