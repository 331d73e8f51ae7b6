"""What a :class:`~torchdiffusion.training.trainer.Trainer` hands out: the EMA model, its pipeline, sample grids, the
loss plot and JSON log, the saved pipeline folder and the Hub upload."""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import torch

from .report import image_grid, loss_plot, save_image, save_json


class TrainerOutputs:
    """Output methods of the Trainer (a mixin: it reads the Trainer's ``unwrapped`` model, ``ema``, ``config``,
    ``noise_scheduler``, ``alphas_cumprod``, ``dataset``, ``class_conditional``/``num_classes``/``null_class_label``,
    ``output_dir``, ``step``, ``losses`` and ``world_size``)."""

    def ema_model(self) -> torch.nn.Module:
        """A copy of the model holding the EMA weights (the model itself without EMA), in eval mode."""
        model = copy.deepcopy(self.unwrapped).to(memory_format=torch.contiguous_format)
        if self.ema is not None:
            self.ema.copy_to(model)
        return model.eval()

    def pipeline(self) -> Any:
        """The pipeline of the EMA model: :class:`DDPMPipeline`, or :class:`ClassConditionalPipeline`."""
        model = self.ema_model()
        if self.class_conditional:
            from ..pipelines.class_conditional import ClassConditionalPipeline

            names = getattr(self.dataset, "class_names", None)
            id2label = {str(i): n for i, n in enumerate(names)} if names else None
            pipe = ClassConditionalPipeline(model, self.noise_scheduler, self.null_class_label, id2label)
        else:
            from ..pipelines.ddpm import DDPMPipeline

            pipe = DDPMPipeline(unet=model, scheduler=self.noise_scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample_images(self, num_images: int, num_inference_steps: int, seed: int = 0) -> torch.Tensor:
        """``(N, C, H, W)`` samples in [-1, 1] from the EMA model with the default sampler of ``torchdiffusion
        generate`` (stochastic DPM-Solver++; fixed seeds: comparable grids)."""
        from ..schedulers.samplers import DEFAULT_SAMPLER
        from .recipes import sampling_scheduler

        pipe = self.pipeline()
        pipe.scheduler = sampling_scheduler(DEFAULT_SAMPLER, self.noise_scheduler.config)
        generators = [torch.Generator().manual_seed(seed + i) for i in range(num_images)]
        num_inference_steps = max(1, min(num_inference_steps, len(self.alphas_cumprod) // 2))
        options: dict[str, Any] = {
            "num_inference_steps": num_inference_steps,
            "generator": generators,
            "output_type": "pt",
        }
        if self.class_conditional:
            labels = [i % self.num_classes for i in range(num_images)]
            guidance = self.config.sample_guidance_scale if self.null_class_label is not None else 1.0
            images = pipe(labels, guidance_scale=guidance, **options).images
        else:
            images = pipe(batch_size=num_images, **options).images
        return images * 2 - 1

    def _write_samples(self) -> None:
        n = self.config.num_sample_images
        if n == 0 or self.config.sample_inference_steps == 0:
            return
        images = self.sample_images(n, self.config.sample_inference_steps, seed=self.config.seed)
        cols = self.num_classes if self.class_conditional and n % self.num_classes == 0 else None
        scale = max(1, 128 // images.shape[-1])
        grid = image_grid(images, cols=cols, scale=scale)
        save_image(grid, os.path.join(self.output_dir, "samples", f"step_{self.step:06d}.png"))
        save_image(grid, os.path.join(self.output_dir, "samples.png"))

    def _write_log(self, history: list[dict], started: float) -> None:
        save_image(
            loss_plot(self.losses, title=f"training loss ({self.step} steps)"),
            os.path.join(self.output_dir, "loss.png"),
        )
        save_json(
            os.path.join(self.output_dir, "train_log.json"),
            {"step": self.step, "max_steps": self.config.max_steps, "seconds": round(time.time() - started, 2),
             "world_size": self.world_size, "config": self.config.to_dict(), "history": history},
        )  # fmt: skip

    def save_pipeline(self, path: str | None = None) -> str:
        """Write the EMA pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``) to ``path`` (default:
        the output folder itself)."""
        path = path or self.output_dir
        self.pipeline().save_pretrained(path)
        return path

    def push_to_hub(self) -> Any:
        """Upload the EMA pipeline (``model_index.json``, ``unet/``, ``scheduler/``; not the checkpoints or sample
        grids) to ``hub_model_id`` (default: the output folder's name), as seed 003's script does."""
        from ..hub import push_to_hub

        cfg = self.config
        repo_id = cfg.hub_model_id or os.path.basename(os.path.normpath(self.output_dir))
        return push_to_hub(
            self.pipeline(), repo_id, commit_message=f"torchdiffusion train: step {self.step}",
            private=cfg.hub_private_repo, token=cfg.hub_token,
        )  # fmt: skip
