"""The tutorials' unconditional flow, with torchdiffusion in place of diffusers (only the import changes).

1. a hand-written training loop: UNet2DModel + DDPMScheduler.add_noise + MSE on the predicted noise;
2. wrap the model in DDPMPipeline and generate;
3. save_pretrained -> model_index.json, scheduler/, unet/;
4. reload with DiffusionPipeline.from_pretrained;
5. a hand-written denoising loop over scheduler.timesteps, and DDIM with fewer steps.

Data: scikit-learn's handwritten digits (real, embedded, no download), upscaled to --image-size.

    python examples/unconditional_flow.py --image-size 16 --epochs 2 --out /tmp/flow
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

from torchdiffusion import DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel


def digits_tensor(image_size: int) -> torch.Tensor:
    """(1797, 1, image_size, image_size) digits in [-1, 1]."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1) * 2 - 1


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--max-batches", type=int, default=0, help="stop each epoch after this many batches (0: all)")
    parser.add_argument("--inference-steps", type=int, default=1000)
    parser.add_argument("--out", default="outputs/unconditional_flow")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    data = digits_tensor(args.image_size)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True)
    n = len(args.channels)
    groups = min(32, min(args.channels))
    model = UNet2DModel(
        sample_size=args.image_size,
        in_channels=1,
        out_channels=1,
        layers_per_block=2,
        block_out_channels=tuple(args.channels),
        down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (n - 1),
        up_block_types=("AttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        norm_num_groups=groups,
    )
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4)

    # 1. the training loop, as the seeds write it
    losses = []
    for epoch in range(args.epochs):
        for step, clean_images in enumerate(loader):
            if args.max_batches and step >= args.max_batches:
                break
            noise = torch.randn(clean_images.shape)
            timesteps = torch.randint(0, noise_scheduler.num_train_timesteps, (clean_images.shape[0],)).long()
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            noise_pred = model(noisy_images, timesteps, return_dict=False)[0]
            loss = F.mse_loss(noise_pred, noise)
            loss.backward()
            losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad()
        print(f"epoch {epoch + 1}: loss {np.mean(losses[-10:]):.4f}")

    # 2. pipeline
    image_pipe = DDPMPipeline(unet=model, scheduler=noise_scheduler)
    image_pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    images = image_pipe(batch_size=4, num_inference_steps=args.inference_steps, generator=generator).images

    # 3. save, 4. reload
    image_pipe.save_pretrained(args.out)
    print("saved:", sorted(os.listdir(args.out)), sorted(os.listdir(os.path.join(args.out, "unet"))))
    reloaded = DiffusionPipeline.from_pretrained(args.out)

    # 5. the hand-written denoising loop
    scheduler = reloaded.scheduler
    scheduler.set_timesteps(args.inference_steps)
    sample = torch.randn(4, 1, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1))
    for t in scheduler.timesteps:
        with torch.no_grad():
            residual = reloaded.unet(sample, t).sample
        sample = scheduler.step(residual, t, sample).prev_sample

    # and a faster sampler swapped in from the same config
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(max(2, args.inference_steps // 20))
    fast = torch.randn(4, 1, args.image_size, args.image_size, generator=torch.Generator().manual_seed(2))
    for t in ddim.timesteps:
        with torch.no_grad():
            fast = ddim.step(reloaded.unet(fast, t).sample, t, fast).prev_sample
    return {"losses": losses, "images": images, "sample": sample, "ddim": fast, "pipeline": reloaded}


if __name__ == "__main__":
    main()
