"""Training throughput (images/s) on this machine: torchdiffusion's Trainer step vs the seeds' plain loop on Diffusers,
with the seeds' 4-level UNet2DModel (64, 128, 128, 256; attention on the two lowest levels) at 32 px, batch 16.

Ours is the real training step (data, noise, forward, backward, grad clipping, fused AdamW, EMA) with channels-last
and the chosen mixed precision; the peer is the seeds' loop (DataLoader, add_noise, forward, MSE, backward, AdamW).
Rounds alternate between the two so load changes hit both; the median step time of each is compared.

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


def peer_steps(batch_size: int):
    """The seeds' loop on Diffusers, as a generator of step times."""
    import diffusers

    from torchdiffusion.training.data import DigitsDataset

    data = DigitsDataset(32, channels=3)
    loader = torch.utils.data.DataLoader(data.images, batch_size=batch_size, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**SEED_UNET)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4)
    while True:
        for clean_images in loader:
            start = time.perf_counter()
            noise = torch.randn(clean_images.shape)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean_images.shape[0],)).long()
            noisy_images = scheduler.add_noise(clean_images, noise, timesteps)
            noise_pred = model(noisy_images, timesteps, return_dict=False)[0]
            loss = F.mse_loss(noise_pred, noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            yield time.perf_counter() - start


def our_steps(batch_size: int, mixed_precision: str, tmp: str):
    """torchdiffusion's Trainer step, as a generator of step times."""
    from torchdiffusion import UNet2DModel
    from torchdiffusion.training import Trainer
    from torchdiffusion.training.data import DigitsDataset, iterate_batches
    from torchdiffusion.training.recipes import default_noise_scheduler

    torch.manual_seed(0)
    trainer = Trainer(
        UNet2DModel(**SEED_UNET),
        default_noise_scheduler(),
        DigitsDataset(32, channels=3),
        output_dir=tmp,
        batch_size=batch_size,
        mixed_precision=mixed_precision,
        learning_rate=4e-4,
        progress_bar=False,
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
            "diffusers (seeds' loop)": peer_steps(args.batch_size),
            "torchdiffusion Trainer": our_steps(args.batch_size, args.mixed_precision, tmp),
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        for gen in sides.values():  # warm-up: allocation, first-call overheads
            for _ in range(2):
                next(gen)
        for _ in range(args.rounds):
            for name, gen in sides.items():
                times[name] += [next(gen) for _ in range(args.steps)]
    print(
        f"seeds' 4-level UNet, 32 px, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"mixed precision {args.mixed_precision}"
    )
    rates = {}
    for name, ts in times.items():
        rates[name] = args.batch_size / statistics.median(ts)
        print(f"  {name:26s} {rates[name]:7.1f} images/s  (median step {statistics.median(ts) * 1000:.0f} ms)")
    ours, peer = rates["torchdiffusion Trainer"], rates["diffusers (seeds' loop)"]
    print(f"  ratio ours/peer: {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
