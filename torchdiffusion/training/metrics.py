"""Sample-quality metrics: the Fréchet distance, FID through ``torch-fidelity``'s Inception when it is installed
and its weights can be had, and an offline yardstick for the ``digits`` data set.

The digits yardstick trains a small CNN on scikit-learn's real digits (deterministically, in seconds) and
scores generated images by: ``confidence`` (mean top-class probability: does it look like *a* digit?),
``class_coverage`` (share of the 10 classes that get a fair share of the samples: are all digits made?) and
``frechet_distance`` between generated and real images in the CNN's 64-d feature space ("FID for digits").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` (Heusel et al. 2017, eq. 6):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, computed in float64 with symmetric
    eigendecompositions (no scipy needed)."""
    a = np.asarray(features_a.detach().cpu() if isinstance(features_a, torch.Tensor) else features_a, np.float64)
    b = np.asarray(features_b.detach().cpu() if isinstance(features_b, torch.Tensor) else features_b, np.float64)
    for name, f in (("features_a", a), ("features_b", b)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be (N, D) with N >= 2, got shape {f.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: features_a has {a.shape[1]}, features_b {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root_a @ cov_b @ root_a
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_cross)


def inception_features(images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """2048-d Inception-v3 pool features of ``images`` ``(B, C, H, W)`` in [0, 1] (the standard FID network, through
    the ``torch-fidelity`` package). Raises ``RuntimeError`` with what to do when it or its weights are missing."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise RuntimeError(
            "FID needs Inception features from the `torch-fidelity` package (pip install torch-fidelity; note that "
            "it depends on torchvision). Offline, pass your own features to frechet_distance(), or use "
            "DigitsYardstick for the digits data set."
        ) from err
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    except Exception as err:  # weights are downloaded on first use
        raise RuntimeError(
            f"could not load the Inception weights for FID ({type(err).__name__}: {err}); they are downloaded on "
            "first use, so run once with network access or put them in torch's hub cache"
        ) from err
    net.eval()
    feats = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            x = (chunk.clamp(0, 1) * 255).round().to(torch.uint8)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            feats.append(net(x)[0].double())
    return torch.cat(feats)


def fid(generated: torch.Tensor, real: torch.Tensor) -> float:
    """FID between two image sets ``(N, C, H, W)`` in [0, 1] (Inception features, see :func:`inception_features`)."""
    return frechet_distance(inception_features(generated), inception_features(real))


# ---- the digits yardstick -----------------------------------------------------------------------------------
class _DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return self.head(feats), feats


class DigitsYardstick:
    """A digits classifier trained on scikit-learn's real digits at 16 px; scores generated digit images.

    ``score(images)`` takes ``(N, 1 or 3, H, W)`` in [-1, 1] (model space) or [0, 1] (``value_range=(0, 1)``) at
    any size (resized to 16 px). Training is seeded and takes a few seconds on a CPU. ``test_indices`` are the 300
    real images held out of the classifier's training (``test_accuracy`` is measured on them).
    """

    resolution = 16

    def __init__(self, seed: int = 0, epochs: int = 10) -> None:
        from .data import DigitsDataset

        data = DigitsDataset(self.resolution)
        x, y = data.images, data.labels
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x), generator=g)
        test_idx, train_idx = order[:300], order[300:]
        threads = torch.get_num_threads()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            torch.set_num_threads(1)  # convolutions this small only lose from threading
            self.net = _DigitsNet()
            opt = torch.optim.Adam(self.net.parameters(), lr=3e-3)
            for _ in range(epochs):
                perm = train_idx[torch.randperm(len(train_idx), generator=g)]
                for batch in perm.split(64):
                    xb = x[batch]
                    shift = torch.randint(-1, 2, (2,), generator=g).tolist()  # small shifts: robust to placement
                    xb = torch.roll(xb, shifts=shift, dims=(2, 3))
                    loss = nn.functional.cross_entropy(self.net(xb)[0], y[batch])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            torch.set_num_threads(threads)
        self.net.eval()
        self.real_images, self.real_labels, self.test_indices = x, y, test_idx
        with torch.no_grad():
            logits, self.real_features = self.net(x)
            self.test_accuracy = float((logits[test_idx].argmax(1) == y[test_idx]).float().mean())

    def _prepare(self, images: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be a (N, 1 or 3, H, W) tensor, got {getattr(images, 'shape', images)}")
        lo, hi = value_range
        x = (images.detach().float().cpu() - lo) / (hi - lo) * 2 - 1
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = nn.functional.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", antialias=True)
        return x.clamp(-1, 1)

    @torch.no_grad()
    def features(self, images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
        """``(N, 64)`` features of ``images``."""
        return self.net(self._prepare(images, value_range))[1]

    @torch.no_grad()
    def score(
        self, images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0), labels: Any = None
    ) -> dict[str, float]:
        """``confidence``, ``class_coverage``, ``frechet_distance`` (and ``label_accuracy`` when the intended
        ``labels`` are given) for ``images``.

        A class counts as covered when at least ``max(1, 0.25 * N / 10)`` images are confidently (p > 0.5)
        classified as it: coverage 1.0 means every digit is made in at least a quarter of its fair share.
        """
        logits, feats = self.net(self._prepare(images, value_range))
        probs = logits.softmax(1)
        conf, pred = probs.max(1)
        n = len(images)
        need = max(1, math.floor(0.25 * n / 10))
        counts = torch.bincount(pred[conf > 0.5], minlength=10)
        out = {
            "confidence": float(conf.mean()),
            "class_coverage": float((counts >= need).float().mean()),
            "frechet_distance": frechet_distance(feats, self.real_features) if n >= 2 else float("nan"),
        }
        if labels is not None:
            labels = torch.as_tensor(labels).flatten()
            out["label_accuracy"] = float((pred == labels).float().mean())
        return out
