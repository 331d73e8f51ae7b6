"""The first two stages of the embedded model's recipe (:mod:`.recipe`): the VAE and the text encoder, each
built small and trained from scratch on ``captioned-digits`` by this module's own loops.

- **VAE** (:func:`build_vae`, :func:`train_vae`): an :class:`~torchdiffusion.AutoencoderKL` that maps 32 x 32 RGB
  images to ``4 x 8 x 8`` latents; loss: L1 + squared error of the reconstruction plus a small KL term.
  :func:`measure_vae` reports PSNR on images it never saw; :func:`latent_scale` the ``scaling_factor`` that
  gives the scaled latents unit standard deviation (what the UNet expects, as in Stable Diffusion).
- **Text encoder** (:func:`build_text_encoder`, :func:`train_text_encoder`): a tiny ``transformers``
  ``CLIPTextModel`` trained contrastively against a small image CNN, CLIP-style, except that every image in the
  batch that *fits* a caption (same digit, and the colours the caption names) counts as a positive, so that
  ``"a 7"`` is not pushed away from the other sevens of the batch. :func:`measure_text_encoder` reports text-to-
  image retrieval: does the best-matching image of a pool fit the caption, for in-distribution captions and for
  captions naming a held-out (digit, colour) pair.

Both loops share :func:`run_loop`: AdamW, warm-up then cosine decay, and an optional time budget that, after a
few steps, lowers the step count to fit (the schedule follows the new length).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..training.captioned_digits import COLOR_NAMES, CaptionedDigitsDataset, parse_caption


def run_loop(
    params: Any,
    loss_fn: Callable[[int], torch.Tensor],
    max_steps: int,
    learning_rate: float,
    minutes: float | None = None,
    warmup: int = 50,
    weight_decay: float = 0.0,
    log: Callable[[str], None] | None = None,
    name: str = "",
) -> dict[str, Any]:
    """Minimise ``loss_fn(step)`` for ``max_steps`` AdamW steps (fewer when ``minutes`` would be exceeded: the
    step count is refitted every 25 steps from the speed since step 3). Returns ``{"steps", "seconds",
    "losses"}`` (the loss of every step)."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    plan = {"total": max_steps}

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, plan["total"] - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    started, losses, probe = time.time(), [], 0.0
    step = 0
    while step < plan["total"]:
        if minutes is not None and step == 2:
            probe = time.time()
        if minutes is not None and step >= 12 and step % 25 == 12:  # refit as the speed changes (shared CPUs)
            per_step = (time.time() - probe) / (step - 2)
            left = minutes * 60 - (time.time() - started)
            plan["total"] = max(step + 1, min(max_steps, step + int(left / per_step)))
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        step += 1
        if log is not None and (step % 200 == 0 or step == plan["total"]):
            recent = losses[-200:]
            log(f"{name} step {step}/{plan['total']}: loss {sum(recent) / len(recent):.4f} "
                f"({time.time() - started:.0f} s)")  # fmt: skip
    return {"steps": step, "seconds": time.time() - started, "losses": losses}


# ---- the VAE ---------------------------------------------------------------------------------------------------
def build_vae(block_out_channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1, seed: int = 0):
    """A fresh :class:`~torchdiffusion.AutoencoderKL` for 32 px RGB: ``len(block_out_channels) - 1`` halvings
    (3 levels: 32 px -> 8 x 8 latents of 4 channels), no mid-block attention (images this small do not need it)."""
    from ..models.autoencoder_kl import AutoencoderKL

    n = len(block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            norm_num_groups=min(32, math.gcd(*block_out_channels)), mid_block_add_attention=False,
            scaling_factor=1.0, force_upcast=False,
        )  # fmt: skip


def vae_loss(vae: Any, images: torch.Tensor, kl_weight: float, generator: torch.Generator) -> torch.Tensor:
    """L1 + squared error of the reconstruction of a posterior sample, plus ``kl_weight`` times the KL to
    N(0, 1) (both means over elements)."""
    dist = vae.encode(images).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator)
    recon = vae.decode(z).sample
    err = recon - images
    kl = 0.5 * (dist.mean**2 + dist.var - 1 - dist.logvar).mean()
    return err.abs().mean() + (err**2).mean() + kl_weight * kl


def train_vae(
    vae: Any,
    data: CaptionedDigitsDataset,
    max_steps: int = 3000,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    kl_weight: float = 5e-4,
    minutes: float | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``vae`` on random batches of ``data`` (rendered per batch). Returns :func:`run_loop`'s summary."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    vae.train().to(memory_format=torch.channels_last)  # on 32 px images NHWC trains ~8 % faster than NCHW

    def loss_fn(step: int) -> torch.Tensor:
        images = data.images(rng.integers(0, len(data), batch_size))
        return vae_loss(vae, images.contiguous(memory_format=torch.channels_last), kl_weight, gen)

    out = run_loop(vae.parameters(), loss_fn, max_steps, learning_rate, minutes, log=log, name="vae")
    vae.eval().to(memory_format=torch.contiguous_format)
    return out


@torch.no_grad()
def measure_vae(vae: Any, images: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Reconstruction of ``images`` ``(N, 3, H, W)`` in [-1, 1] through the posterior mean: PSNR (dB, on [0, 1]
    pixels, of the mean squared error) and mean absolute error in 8-bit levels."""
    sq, ab = 0.0, 0.0
    for batch in images.split(batch_size):
        recon = vae.decode(vae.encode(batch).latent_dist.mean).sample.clamp(-1, 1)
        sq += float(((recon - batch) / 2).pow(2).sum())
        ab += float(((recon - batch) / 2).abs().sum())
    n = images.numel()
    return {"psnr_db": round(10 * math.log10(1 / max(sq / n, 1e-12)), 2), "mae_8bit": round(255 * ab / n, 2)}


@torch.no_grad()
def latent_scale(vae: Any, images: torch.Tensor) -> float:
    """``1 / std`` of posterior samples of ``images``: the ``scaling_factor`` that gives unit-variance latents."""
    dist = vae.encode(images).latent_dist
    return float(1 / dist.sample(torch.Generator().manual_seed(0)).std())


# ---- the text encoder --------------------------------------------------------------------------------------------
def build_text_encoder(
    tokenizer: Any, hidden_size: int = 128, num_layers: int = 3, num_heads: int = 4, seed: int = 0
):
    """A fresh ``transformers.CLIPTextModel`` sized for ``tokenizer`` (vocabulary, special tokens, and its
    ``model_max_length`` as the number of positions)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length, projection_dim=hidden_size,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config)


class ImageTower(nn.Module):
    """The image side of the contrastive stage (not shipped): 32 px RGB ``(N, 3, 32, 32)`` -> ``(N, dim)``."""

    def __init__(self, dim: int = 128, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 16, 256), nn.SiLU(), nn.Linear(256, dim),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def caption_asks(captions: list[str]) -> torch.Tensor:
    """``(N, 3)`` long: the digit, fg and bg each caption asks for (``-1``: not named), colours as indices."""
    rows = []
    for caption in captions:
        p = parse_caption(caption)
        rows.append([p.digit, -1 if p.fg is None else COLOR_NAMES.index(p.fg),
                     -1 if p.bg is None else COLOR_NAMES.index(p.bg)])  # fmt: skip
    return torch.tensor(rows, dtype=torch.long)


def fits(asks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(T, I)`` bool: image ``j`` (``labels[j]`` = digit, fg, bg) shows what caption ``i`` asks (``asks[i]``)."""
    match = (asks[:, None, :] == labels[None, :, :]) | (asks[:, None, :] < 0)
    return match.all(-1)


class ContrastivePair(nn.Module):
    """Text encoder + image tower + a learnt temperature; ``forward`` -> ``(T, I)`` similarity logits."""

    def __init__(self, text_encoder: Any, dim: int) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.text_proj = nn.Linear(text_encoder.config.hidden_size, dim, bias=False)
        self.image = ImageTower(dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, input_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        text = self.text_proj(self.text_encoder(input_ids).pooler_output)
        text = nn.functional.normalize(text, dim=-1)
        image = nn.functional.normalize(self.image(images), dim=-1)
        return self.log_scale.exp().clamp(max=100) * text @ image.T


def _tokens(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids  # fmt: skip


def multi_positive_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy against uniform targets over the positives of each row / column (rows and
    columns without a positive are left out)."""

    def one_way(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        count = target.sum(1)
        loss = -(target / count.clamp_min(1)[:, None] * scores.log_softmax(1)).sum(1)
        return loss[count > 0].mean()

    target = positive.float()
    return (one_way(logits, target) + one_way(logits.T, target.T)) / 2


def train_text_encoder(
    text_encoder: Any,
    tokenizer: Any,
    data: CaptionedDigitsDataset,
    max_steps: int = 1500,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    minutes: float | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Contrastive training of ``text_encoder`` on ``data`` (see the module docstring). Returns
    :func:`run_loop`'s summary with ``"pair"`` (the :class:`ContrastivePair`, for :func:`measure_text_encoder`)."""
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pair = ContrastivePair(text_encoder, text_encoder.config.projection_dim)
    labels = torch.stack([data.digits, data.fg, data.bg], 1)
    asks = caption_asks(data.captions)
    ids = _tokens(tokenizer, data.captions)
    pair.train()

    def loss_fn(step: int) -> torch.Tensor:
        index = torch.from_numpy(rng.integers(0, len(data), batch_size))
        logits = pair(ids[index], data.images(index))
        return multi_positive_loss(logits, fits(asks[index], labels[index]))

    out = run_loop(pair.parameters(), loss_fn, max_steps, learning_rate, minutes, weight_decay=0.01, log=log,
                   name="text encoder")  # fmt: skip
    pair.eval()
    text_encoder.eval()
    return {**out, "pair": pair}


@torch.no_grad()
def measure_text_encoder(pair: ContrastivePair, tokenizer: Any, seed: int = 0, pool: int = 512) -> dict[str, float]:
    """Text-to-image retrieval over a pool of ``pool`` unseen images (half training-split, half held-out-split):
    the share of captions whose best-matching image fits them, for captions of training-split images
    (``in_distribution``) and for captions naming a held-out (digit, fg) pair (``held_out``)."""
    train = CaptionedDigitsDataset("train", pool // 2, seed=seed + 101)
    held = CaptionedDigitsDataset("held_out", pool // 2, seed=seed + 101)
    images = torch.cat([train.images(), held.images()])
    labels = torch.cat([torch.stack([d.digits, d.fg, d.bg], 1) for d in (train, held)])
    out = {}
    for name, captions in (("in_distribution", train.captions),
                           ("held_out", [f"a {COLOR_NAMES[f]} {d}" for d, f in zip(held.digits.tolist(),
                                                                                   held.fg.tolist())])):  # fmt: skip
        logits = pair(_tokens(tokenizer, captions), images)
        ok = fits(caption_asks(captions), labels).gather(1, logits.argmax(1, keepdim=True))
        out[f"retrieval_{name}"] = round(float(ok.float().mean()), 4)
    return out
