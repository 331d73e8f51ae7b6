"""One run for the multi-process test: python -m tests.training.dist_script OUT BATCH RESULTS [SD CAPTIONS] (under
torchrun or alone; with SD and CAPTIONS folders a LoRA text-to-image run). Each rank writes RESULTS/rank<R>.json
(losses, files it created under OUT) and its final in-memory weights RESULTS/rank<R>.safetensors (files, not
stdout: two ranks' prints can interleave on one line)."""

from __future__ import annotations

import builtins
import json
import os
import sys

import torch

from torchdiffusion.training import Trainer
from torchdiffusion.training.data import DigitsDataset

from .common import FAST, tiny_scheduler, tiny_unet


def _record_writes(out: str, seen: list[str]) -> None:
    """On ranks > 0: note every file or folder created under ``out`` (there must be none)."""
    real_open, real_makedirs, real_replace = builtins.open, os.makedirs, os.replace

    def note(path) -> None:
        if os.path.abspath(os.fspath(path)).startswith(os.path.abspath(out)):
            seen.append(os.fspath(path))

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wax+"):
            note(file)
        return real_open(file, mode, *args, **kwargs)

    def makedirs(name, *args, **kwargs):
        note(name)
        return real_makedirs(name, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        note(dst)
        return real_replace(src, dst, *args, **kwargs)

    builtins.open, os.makedirs, os.replace = open_, makedirs, replace


def main() -> None:
    out, batch, results = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    seen: list[str] = []
    if rank > 0:
        _record_writes(out, seen)
    options = dict(FAST, batch_size=batch, max_steps=5, checkpointing_steps=2, seed=1, num_sample_images=2)
    if len(sys.argv) > 4:
        from torchdiffusion.training.sources import load_captioned_dataset
        from torchdiffusion.training.text_to_image import TextToImageTask

        task = TextToImageTask(sys.argv[4], lora_rank=4, seed=1)
        options.update(max_steps=3, validation_prompts=("a cat",), num_validation_images=1, caption_dropout_prob=0.3)
        trainer = Trainer(task, dataset=load_captioned_dataset(sys.argv[5], 64), output_dir=out, **options)
    else:
        trainer = Trainer(tiny_unet(), tiny_scheduler(), DigitsDataset(8), output_dir=out, **options)
    result = trainer.train()
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in trainer.unwrapped.state_dict().items()}
    save_file(state, os.path.join(results, f"rank{rank}.safetensors"))
    with open(os.path.join(results, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "losses": result.losses, "writes": seen}, f)


if __name__ == "__main__":
    main()
