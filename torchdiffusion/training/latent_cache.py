"""The frozen half of text-to-image training: the VAE that maps images to latent distributions and the CLIP text
encoder that maps captions to embeddings, and the cache that computes each once.

With the VAE and text encoder frozen and images without random augmentation, an image always has the same latent
distribution ``N(mean, exp(logvar))`` and a caption the same embedding. :class:`LatentCache` stores them
(``mean``/``logvar`` per image, one embedding per distinct caption plus the empty caption that caption dropout
uses) and serves batches ``{"latent_mean", "latent_logvar", "caption_index"}``; each step still *samples* the latent
(``mean + std * noise``), so a cached run draws from the same distribution as an uncached one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .data import collate


class FrozenEncoders:
    """``vae`` (AutoencoderKL) + ``text_encoder`` (CLIPTextModel) + ``tokenizer``, frozen, on ``device``; the
    forward passes run under ``autocast`` (a context manager factory, e.g. ``accelerator.autocast``)."""

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any, device: Any, autocast: Any = None) -> None:
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.device, self.autocast = device, autocast
        self.scaling_factor = float(vae.config.get("scaling_factor", 0.18215))
        self.shift_factor = float(vae.config.get("shift_factor", None) or 0.0)

    def _context(self):
        import contextlib

        return self.autocast() if self.autocast is not None else contextlib.nullcontext()

    @torch.no_grad()
    def latent_dist(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixels`` ``(B, 3, H, W)`` in [-1, 1] -> the latent distribution's ``mean`` and clamped ``logvar``,
        each ``(B, C, H/f, W/f)`` float32 (``f``: the VAE's downscale factor)."""
        with self._context():
            dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.logvar.float()

    def sample_latents(self, mean: torch.Tensor, logvar: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        """``x0 = (mean + exp(logvar / 2) * draw - shift_factor) * scaling_factor`` (what the UNet denoises)."""
        latents = mean + torch.exp(0.5 * logvar) * draw.to(mean)
        return (latents - self.shift_factor) * self.scaling_factor

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """Token ids ``(B, model_max_length)`` (padded to the maximum length, cut there), on the device."""
        from ..pipelines.stable_diffusion.prompts import _TOKENIZER_LOCK  # one tokenizer call at a time

        with _TOKENIZER_LOCK:
            ids = self.tokenizer(
                list(captions), max_length=self.tokenizer.model_max_length, padding="max_length", truncation=True,
                return_tensors="pt",
            ).input_ids  # fmt: skip
        return ids.to(self.device)

    @torch.no_grad()
    def embed(self, captions: Sequence[str]) -> torch.Tensor:
        """Caption embeddings ``(B, tokens, dim)``: the text encoder's last hidden state."""
        with self._context():
            return self.text_encoder(self.tokenize(captions), return_dict=False)[0]


class LatentCache(torch.utils.data.Dataset):
    """Every item's latent distribution and caption embedding, computed once from ``dataset`` (items with
    ``"images"`` and ``"captions"``) by ``encoders``, ``batch_size`` items at a time. ``cache[(i, seed)]`` (or
    ``cache[i]``) is ``{"latent_mean", "latent_logvar": (C, h, w), "caption_index": int}``; ``embeddings``
    ``(num_captions + 1, tokens, dim)`` holds each distinct caption, the empty caption last (``empty_index``)."""

    def __init__(self, dataset: Any, encoders: FrozenEncoders, batch_size: int = 16, progress: bool = True) -> None:
        from tqdm.auto import tqdm

        n = len(dataset)
        means, logvars, captions = [], [], []
        with tqdm(total=n, desc="caching latents", unit="img", disable=not progress, leave=False) as bar:
            for start in range(0, n, batch_size):
                batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
                mean, logvar = encoders.latent_dist(batch["images"])
                means.append(mean.cpu())
                logvars.append(logvar.cpu())
                captions += batch["captions"]
                bar.update(len(batch["captions"]))
        self.mean, self.logvar = torch.cat(means), torch.cat(logvars)
        distinct = sorted(set(captions))
        index = {c: i for i, c in enumerate(distinct)}
        self.caption_index = [index[c] for c in captions]
        self.captions = [*distinct, ""]
        self.empty_index = len(distinct)
        self.embeddings = torch.cat(
            [encoders.embed(self.captions[i : i + batch_size]).cpu() for i in range(0, len(self.captions), batch_size)]
        )

    def __len__(self) -> int:
        return self.mean.shape[0]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index = int(key[0] if isinstance(key, tuple) else key)
        return {
            "latent_mean": self.mean[index],
            "latent_logvar": self.logvar[index],
            "caption_index": self.caption_index[index],
        }
