"""Sample quality at equal CPU time on the digits yardstick: torchdiffusion's `train` command vs the tutorials' loop on
Diffusers.

1. ours: ``torchdiffusion train --dataset digits --resolution 16 --steps 1500 --output-dir DIR --seed 0`` (timed);
2. peer: the tutorials' loop (Diffusers UNet2DModel of the MNIST tutorial's size,
   DDPMScheduler squaredcos_cap_v2, AdamW 4e-4,
   MSE on the noise, batch 64, no EMA) run for the same wall time;
3. both sample 256 images with 50 DPM-Solver++ steps (each with its own library) and are scored by
   :class:`~torchdiffusion.training.metrics.DigitsYardstick`: confidence, class coverage, Fréchet distance in the
   classifier's feature space (lower is better); real held-in digits are scored for reference.

    python benchmarks/train_quality.py                 # the full figure (two runs of ~1500 steps: long on a CPU)
    python benchmarks/train_quality.py --steps 300     # a quick look
    python benchmarks/train_quality.py --output-dir DIR --reuse-ours   # score a finished run of ours again
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.nn.functional as F

SEED_002_UNET = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 2,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
}


def run_ours(out: str, steps: int, seed: int) -> float:
    from torchdiffusion.cli import main

    start = time.time()
    code = main(
        [
            "train",
            "--dataset",
            "digits",
            "--resolution",
            "16",
            "--steps",
            str(steps),
            "--output-dir",
            out,
            "--seed",
            str(seed),
            "--no-progress",
        ]
    )
    assert code == 0
    return time.time() - start


def sample_ours(out: str, n: int) -> torch.Tensor:
    from torchdiffusion.cli import generate

    images, _ = generate(out, num_images=n, scheduler="dpm++", steps=50, seed=1234)
    return images


def run_peer(seconds: float, seed: int, batch_size: int = 64):
    """The tutorials' loop for ``seconds`` of wall time; returns the model, the scheduler and the steps done."""
    import diffusers

    from torchdiffusion.training.data import DigitsDataset

    torch.manual_seed(seed)
    data = DigitsDataset(16)
    loader = torch.utils.data.DataLoader(data.images, batch_size=batch_size, shuffle=True)
    model = diffusers.UNet2DModel(**SEED_002_UNET)
    noise_scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4)
    start, steps = time.time(), 0
    while time.time() - start < seconds:
        for clean_images in loader:
            noise = torch.randn(clean_images.shape)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],)).long()
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            noise_pred = model(noisy_images, timesteps, return_dict=False)[0]
            loss = F.mse_loss(noise_pred, noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            if time.time() - start >= seconds:
                break
    return model, noise_scheduler, steps


def sample_peer(model, noise_scheduler, n: int) -> torch.Tensor:
    import diffusers

    # The same sampler settings as ours (torchdiffusion.schedulers.samplers.swap_scheduler): the training schedule's
    # timestep spacing and dynamic thresholding, Diffusers' advice for pixel-space models; with its defaults
    # (linspace from t=999 on the cosine schedule) most samples saturate, which would be no comparison at all.
    sampler = diffusers.DPMSolverMultistepScheduler.from_config(
        noise_scheduler.config, timestep_spacing=noise_scheduler.config.timestep_spacing, thresholding=True
    )
    pipe = diffusers.DDPMPipeline(unet=model.eval(), scheduler=sampler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        images = pipe(batch_size=n, num_inference_steps=50, generator=generator, output_type="np").images
    return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1


def main() -> None:
    from torchdiffusion.training.metrics import DigitsYardstick

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=None, help="keep our run here (default: a temporary folder)")
    p.add_argument(
        "--reuse-ours",
        action="store_true",
        help="--output-dir already holds a finished run of --steps steps: score it, give the peer its logged time",
    )
    args = p.parse_args()
    yardstick = DigitsYardstick()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or os.path.join(tmp, "ours")
        if args.reuse_ours:
            with open(os.path.join(out, "train_log.json")) as f:
                log = json.load(f)
            if log["step"] != args.steps:
                raise SystemExit(f"{out} holds a run of {log['step']} steps, not --steps {args.steps}")
            seconds = float(log["seconds"])  # the training loop's time (incl. its sample grids and checkpoints)
        else:
            seconds = run_ours(out, args.steps, args.seed)
        ours = yardstick.score(sample_ours(out, args.num_images))
        model, scheduler, peer_steps = run_peer(seconds, args.seed)
        peer = yardstick.score(sample_peer(model, scheduler, args.num_images))
    real = yardstick.score(yardstick.real_images[: args.num_images])
    print(f"digits 16 px, equal wall time {seconds:.0f} s, {args.num_images} samples, 50 DPM-Solver++ steps")
    print(f"  {'':30s} {'confidence':>10s} {'coverage':>9s} {'Frechet':>8s}")
    rows = [
        (f"torchdiffusion train ({args.steps} steps)", ours),
        (f"diffusers tutorials' loop ({peer_steps} steps)", peer),
        ("real digits (reference)", real),
    ]
    for name, s in rows:
        print(f"  {name:30s} {s['confidence']:10.3f} {s['class_coverage']:9.2f} {s['frechet_distance']:8.2f}")
    print(json.dumps({"seconds": seconds, "ours": ours, "peer": peer, "peer_steps": peer_steps, "real": real}))


if __name__ == "__main__":
    main()
