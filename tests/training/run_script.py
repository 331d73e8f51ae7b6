"""A training run in its own process, for the tests that kill it (python -m tests.training.run_script MODE OUT
[SD_FOLDER CAPTIONS_FOLDER]: with the last two, a LoRA text-to-image run on that tiny SD folder)."""

from __future__ import annotations

import os
import sys
import time

import torch

from torchdiffusion.training import Trainer, checkpoint
from torchdiffusion.training.data import DigitsDataset

from .common import FAST, tiny_scheduler, tiny_unet


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if mode == "hang_after_4":  # stop forever once checkpoint 4 is complete: the test kills us
        save = checkpoint.save_checkpoint

        def save_then_hang(root, step, state, keep_last=None):
            path = save(root, step, state, keep_last)
            print(f"SAVED {step}", flush=True)
            if step == 4:
                time.sleep(600)
            return path

        checkpoint.save_checkpoint = save_then_hang
    elif mode == "hang_inside_4":  # stop forever half-way through writing checkpoint 4
        write = checkpoint._write_file

        def slow_write(folder, name, fn):
            if "000004" in folder and name == "optimizer.pt":
                print(f"WRITING {name}", flush=True)
                time.sleep(600)
            write(folder, name, fn)

        checkpoint._write_file = slow_write
    options = dict(FAST, max_steps=6, checkpointing_steps=2, sample_steps=100, checkpoints_total_limit=2, seed=5)
    if mode == "resume":
        options["resume_from_checkpoint"] = "latest"
    if len(sys.argv) > 3:  # text-to-image: LoRA on a tiny SD folder, cached latents
        from torchdiffusion.training.sources import load_captioned_dataset
        from torchdiffusion.training.text_to_image import TextToImageTask

        from .t2i_common import T2I_FAST

        options = {**T2I_FAST, **options, "batch_size": 2, "num_validation_images": 0}
        data = load_captioned_dataset(sys.argv[4], 64)
        Trainer(TextToImageTask(sys.argv[3], lora_rank=4, seed=5), dataset=data, output_dir=out, **options).train()
    else:
        Trainer(tiny_unet(), tiny_scheduler(), DigitsDataset(8), output_dir=out, **options).train()
    print("DONE", os.listdir(out), flush=True)


if __name__ == "__main__":
    main()
