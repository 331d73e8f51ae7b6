"""Seeds 001/003 with the library Trainer instead of a hand-written loop: the same UNet2DModel + DDPMScheduler,
trained on scikit-learn's digits with EMA, warm-up + cosine LR, checkpoints and sample grids; the output folder is
a pipeline folder. Runs unchanged under `accelerate launch --multi_gpu --num_processes 2` or `torchrun`.

    python examples/train_digits.py --steps 1500 --out runs/digits
    python examples/train_digits.py --steps 3000 --out runs/digits --resume latest    # go on from the last checkpoint
"""

from __future__ import annotations

import argparse

import torch

from torchdiffusion import DDPMScheduler, DiffusionPipeline, UNet2DModel
from torchdiffusion.training import DigitsDataset, DigitsYardstick, Trainer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="runs/digits")
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    trainer = Trainer(
        model,
        noise_scheduler,
        DigitsDataset(16),
        output_dir=args.out,
        max_steps=args.steps,
        batch_size=args.batch_size,
        resume_from_checkpoint=args.resume,
    )
    result = trainer.train()

    pipe = DiffusionPipeline.from_pretrained(args.out)  # a DDPMPipeline with the EMA weights
    images = pipe(batch_size=64, num_inference_steps=50, generator=torch.Generator().manual_seed(0), output_type="pt")
    scores = DigitsYardstick().score(images.images, value_range=(0, 1))
    print(f"{result.step} steps; yardstick: {scores}")
    return {"result": result, "scores": scores}


if __name__ == "__main__":
    main()
