"""Training throughput (images/s) on this machine: torchdiffusion's Trainer step vs the tutorials' plain loop on
Diffusers, with the tutorials' 4-level UNet2DModel (64, 128, 128, 256; attention on the two lowest levels) at 32 px,
batch 16.

Four sides, each timed over the same work per step: fetch the batch, draw noise and timesteps, forward, MSE,
backward, then whatever the side's settings add (gradient clipping, the optimizer step, EMA):

* ``diffusers, its defaults``: the tutorials' loop (DataLoader, add_noise, forward, MSE, backward, plain AdamW);
* ``ours, its defaults``: the Trainer step (channels-last in fp32, NCHW under bf16; clipping at 1.0, fused AdamW,
  EMA, lr schedule);
* ``diffusers, our settings``: the tutorials' loop given the same settings (our layout, bf16 autocast with
  ``--mixed-precision bf16``, clipping at 1.0, fused AdamW, Diffusers' own EMAModel with the same decay schedule);
* ``ours, Diffusers' settings``: the Trainer in fp32 and NCHW, clipping and EMA off, a plain AdamW.

Printed: the defaults-vs-defaults ratio (what a user of each gets) and the two same-settings ratios (the library
itself). Rounds alternate between the sides so load changes hit all alike; median step times are compared.

    python benchmarks/train_throughput.py                       # fp32 (the fast choice on CPUs without bf16 units)
    python benchmarks/train_throughput.py --mixed-precision bf16 --rounds 5 --steps 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SEED_UNET = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "block_out_channels": (64, 128, 128, 256),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
}
LR = 4e-4


def peer_steps(batch_size: int, ours_settings: bool, mixed_precision: str = "no"):
    """The tutorials' loop on Diffusers (with our Trainer's default settings if ``ours_settings``: its layout, bf16
    autocast when ``mixed_precision`` is bf16, clipping, fused AdamW, EMA), as a generator of step times; the timer
    covers fetching the batch too."""
    import contextlib

    import diffusers
    from diffusers.training_utils import EMAModel

    from torchdiffusion.training.data import DigitsDataset

    data = DigitsDataset(32, channels=3)
    loader = torch.utils.data.DataLoader(data.images, batch_size=batch_size, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**SEED_UNET)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ema = None
    channels_last = ours_settings and mixed_precision == "no"  # our Trainer's choice on the CPU
    bf16 = ours_settings and mixed_precision == "bf16"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ours_settings:
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.99), fused=True)
        ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    while True:
        batches = iter(loader)
        while True:
            start = time.perf_counter()
            clean_images = next(batches, None)
            if clean_images is None:
                break
            noise = torch.randn(clean_images.shape)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean_images.shape[0],)).long()
            noisy_images = scheduler.add_noise(clean_images, noise, timesteps)
            if channels_last:
                noisy_images = noisy_images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                noise_pred = model(noisy_images, timesteps, return_dict=False)[0]
            loss = F.mse_loss(noise_pred.float(), noise)
            loss.backward()
            if ours_settings:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            if ema is not None:
                ema.step(model.parameters())
            yield time.perf_counter() - start


def our_steps(batch_size: int, mixed_precision: str, tmp: str, peer_settings: bool):
    """torchdiffusion's Trainer step (with Diffusers' plain settings if ``peer_settings``), as a generator of step
    times; the step fetches its batch itself."""
    from torchdiffusion import UNet2DModel
    from torchdiffusion.training import Trainer
    from torchdiffusion.training.data import DigitsDataset, iterate_batches
    from torchdiffusion.training.recipes import default_noise_scheduler

    torch.manual_seed(0)
    model = UNet2DModel(**SEED_UNET)
    options = {}
    if peer_settings:
        options = dict(channels_last=False, use_ema=False, max_grad_norm=None)
        options["optimizer"] = torch.optim.AdamW(model.parameters(), lr=LR)
    trainer = Trainer(
        model,
        default_noise_scheduler(),
        DigitsDataset(32, channels=3),
        output_dir=tmp,
        batch_size=batch_size,
        mixed_precision=mixed_precision,
        learning_rate=LR,
        progress_bar=False,
        **options,
    )
    trainer._setup()
    batches = iterate_batches(trainer.dataset, trainer.plan, 0)
    while True:
        start = time.perf_counter()
        trainer._optimizer_step(batches)
        yield time.perf_counter() - start


def main() -> None:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round and side")
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="no")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {
            "diffusers, its defaults": peer_steps(args.batch_size, ours_settings=False),
            "ours, its defaults": our_steps(args.batch_size, args.mixed_precision, tmp + "/a", peer_settings=False),
            "diffusers, our settings": peer_steps(args.batch_size, True, args.mixed_precision),
            "ours, Diffusers' settings": our_steps(args.batch_size, "no", tmp + "/b", peer_settings=True),
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        for gen in sides.values():  # warm-up: allocation, first-call overheads
            for _ in range(2):
                next(gen)
        names = list(sides)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate which side goes first
                times[name] += [next(sides[name]) for _ in range(args.steps)]
    print(
        f"tutorials' 4-level UNet, 32 px, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"mixed precision {args.mixed_precision}"
    )
    rates = {}
    for name, ts in times.items():
        rates[name] = args.batch_size / statistics.median(ts)
        print(f"  {name:26s} {rates[name]:7.1f} images/s  (median step {statistics.median(ts) * 1000:.0f} ms)")
    ratios = (
        ("defaults vs defaults", "ours, its defaults", "diffusers, its defaults"),
        ("both with our settings", "ours, its defaults", "diffusers, our settings"),
        ("both with Diffusers' settings", "ours, Diffusers' settings", "diffusers, its defaults"),
    )
    for label, ours, peer in ratios:
        print(f"  ours/peer images/s, {label + ':':31s} {rates[ours] / rates[peer]:.2f}x")

if __name__ == "__main__":
    main()
