"""What a training run hands out, as plain functions of what they use: the EMA model, its pipeline, sample
grids, the loss plot and JSON log, the saved pipeline folder and the Hub upload. The
:class:`~torchdiffusion.training.trainer.Trainer` calls them with its model, scheduler and settings."""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..utils.image_files import image_grid, save_image
from .report import save_json, save_loss_plot


def ema_model(model: torch.nn.Module, ema: Any = None) -> torch.nn.Module:
    """A copy of ``model`` holding the weights of ``ema`` (an :class:`EMAModel`; None: ``model``'s own), in eval
    mode and contiguous memory format."""
    copied = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    if ema is not None:
        ema.copy_to(copied)
    return copied.eval()


def build_pipeline(
    model: torch.nn.Module,
    noise_scheduler: Any,
    class_conditional: bool = False,
    null_class_label: int | None = None,
    class_names: Sequence[str] | None = None,
) -> Any:
    """:class:`ClassConditionalPipeline` (``class_conditional``; ``null_class_label``: the label-dropout class,
    ``class_names``: names by index) or :class:`DDPMPipeline` around ``model``, with its progress bar off."""
    if class_conditional:
        from ..pipelines.class_conditional import ClassConditionalPipeline

        id2label = {str(i): n for i, n in enumerate(class_names)} if class_names else None
        pipe = ClassConditionalPipeline(model, noise_scheduler, null_class_label, id2label)
    else:
        from ..pipelines.ddpm import DDPMPipeline

        pipe = DDPMPipeline(unet=model, scheduler=noise_scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_sample_grid(images: torch.Tensor, output_dir: str, step: int, cols: int | None = None) -> None:
    """Save ``images`` ``(N, C, H, W)`` in [-1, 1] as ``samples/step_<step>.png`` and ``samples.png`` (the latest)."""
    grid = image_grid(images, cols=cols, scale=max(1, 128 // images.shape[-1]))
    save_image(grid, os.path.join(output_dir, "samples", f"step_{step:06d}.png"))
    save_image(grid, os.path.join(output_dir, "samples.png"))


def log_grid(accelerator: Any, images: torch.Tensor, step: int, name: str = "validation") -> None:
    """Send ``images`` ``(N, C, H, W)`` in [-1, 1] to the run's accelerate trackers, as Diffusers' scripts do:
    TensorBoard ``add_images`` (NHWC uint8), W&B a list of ``wandb.Image``."""
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for tracker in getattr(accelerator, "trackers", ()):
        if tracker.name == "tensorboard":
            tracker.writer.add_images(name, array, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({name: [wandb.Image(a) for a in array]}, step=step)


def write_log(
    output_dir: str,
    losses: Sequence[float],
    history: list[dict],
    started: float,
    step: int,
    world_size: int,
    config: Any,
) -> None:
    """Write ``loss.png`` (every step's loss) and ``train_log.json`` (``history``: the logged steps; ``config``:
    the :class:`TrainingConfig`; ``started``: the run's start, from ``time.time()``). Without matplotlib the plot
    is skipped with a warning: a run never stops for its picture."""
    try:
        save_loss_plot(losses, os.path.join(output_dir, "loss.png"), title=f"training loss ({step} steps)")
    except ImportError as e:
        warnings.warn(f"no loss.png: {e}", stacklevel=2)
    save_json(
        os.path.join(output_dir, "train_log.json"),
        {"step": step, "max_steps": config.max_steps, "seconds": round(time.time() - started, 2),
         "world_size": world_size, "config": config.to_dict(), "history": history},
    )  # fmt: skip


def push_output(save: Any, output_dir: str, step: int, config: Any) -> Any:
    """Upload what ``save(folder)`` writes (the run's output: a pipeline folder, or a LoRA file and its card; not
    the checkpoints) to ``config.hub_model_id`` (default: the output folder's name), private if
    ``config.hub_private_repo``."""
    from ..hub import push_to_hub

    repo_id = config.hub_model_id or os.path.basename(os.path.normpath(output_dir))
    return push_to_hub(
        save, repo_id, commit_message=f"torchdiffusion train: step {step}", private=config.hub_private_repo,
        token=config.hub_token,
    )  # fmt: skip
