"""What kind of model a :class:`~torchdiffusion.training.trainer.Trainer` trains: a *task* turns a batch into the
clean sample ``x0`` and the model's conditioning, and turns the trained model into a pipeline. The Trainer's loop
(noise, timesteps, target, loss weighting, accumulation, checkpoints, logs) is the same for every task.

* :class:`PixelTask`: an unconditional or class-conditional pixel-space model (``UNet2DModel``) -> a
  :class:`DDPMPipeline` / :class:`ClassConditionalPipeline` folder.
* :class:`~torchdiffusion.training.text_to_image.TextToImageTask`: a Stable Diffusion UNet on VAE latents and
  CLIP text embeddings, fully or through LoRA adapters -> a pipeline folder or a LoRA file.

A task offers ``model`` (the module that is optimised), ``noise_scheduler`` (None: given to the Trainer),
``supports_ema``, ``latent`` (x0 is sampled from a latent distribution), and the methods of :class:`PixelTask`.
A task with its own objective also offers ``loss(model, batch, micro_step, accelerator, config)`` -> the scalar loss
of this process's part of the micro-batch, which the Trainer then uses instead of its denoising loss
(:class:`~torchdiffusion.training.consistency.LatentConsistencyTask`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from . import outputs


class PixelTask:
    """Denoise pixels: ``x0`` is ``batch["images"]``; a model whose config has ``num_class_embeds`` is
    class-conditional (labels dropped to the null class ``num_classes`` with probability ``class_dropout_prob``,
    so the pipeline can use classifier-free guidance)."""

    supports_ema = True
    latent = False
    noise_scheduler = None

    def __init__(self, model: torch.nn.Module, dataset: Any, class_dropout_prob: float) -> None:
        self.model, self.dataset = model, dataset
        self.num_classes = int(getattr(dataset, "num_classes", 0) or 0)
        model_config = getattr(model, "config", {}) or {}
        self.class_conditional = model_config.get("num_class_embeds") is not None
        self.null_class_label: int | None = None
        if self.class_conditional:
            table = model_config["num_class_embeds"]
            if self.num_classes == 0:
                raise ValueError("the model is class-conditional (num_class_embeds is set) but dataset has no labels")
            if class_dropout_prob > 0:
                if table < self.num_classes + 1:
                    raise ValueError(
                        f"class_dropout_prob={class_dropout_prob} needs num_class_embeds >= num_classes + 1 "
                        f"= {self.num_classes + 1} (the extra class means 'no label'); the model has {table}"
                    )
                self.null_class_label = self.num_classes
            elif table < self.num_classes:
                raise ValueError(f"num_class_embeds={table} is smaller than the data set's {self.num_classes} classes")

    def dropout_prob(self, config: Any) -> float:
        """Share of conditions replaced by the 'no condition' one (classifier-free guidance)."""
        return config.class_dropout_prob if self.class_conditional else 0.0

    def setup(self, accelerator: Any, config: Any, dataset: Any) -> Any:
        """Called once the device is known; returns the data set the run iterates over."""
        return self.dataset

    def sample_shape(self, batch: dict[str, Any]) -> tuple[int, ...]:
        """``(C, H, W)`` of one ``x0``."""
        return tuple(batch["images"].shape[1:])

    def inputs(
        self, batch: dict[str, Any], drop: torch.Tensor, latent_noise: torch.Tensor | None, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``x0`` ``(B, C, H, W)`` on ``device`` and the model's keyword arguments (``class_labels``, with the
        ``drop`` ``(B,)`` mask applied)."""
        x0 = batch["images"].to(device, non_blocking=True)
        kwargs: dict[str, Any] = {}
        if self.class_conditional:
            labels = batch["labels"].clone()
            if self.null_class_label is not None:
                labels[drop] = self.null_class_label
            kwargs["class_labels"] = labels.to(device)
        return x0, kwargs

    def pipeline(self, model: torch.nn.Module, noise_scheduler: Any) -> Any:
        """The pipeline around ``model`` (an eval copy holding the weights to export)."""
        names = getattr(self.dataset, "class_names", None)
        return outputs.build_pipeline(model, noise_scheduler, self.class_conditional, self.null_class_label, names)

    def sample_grid(self, pipe: Any, config: Any, num_inference_steps: int) -> tuple[torch.Tensor, int | None]:
        """``(N, C, H, W)`` images in [-1, 1] for the sample grid and its column count."""
        from ..pipelines.generate import generate_images  # the pipelines load when a grid is drawn

        return generate_images(
            pipe, config.num_sample_images, num_inference_steps, seed=config.seed,
            guidance_scale=config.sample_guidance_scale, num_classes=self.num_classes or None,
        )  # fmt: skip

    def wants_samples(self, config: Any) -> bool:
        return bool(config.num_sample_images and config.sample_inference_steps)

    def save(self, pipe: Any, path: str | os.PathLike, step: int, config: Any) -> str:
        """Write the pipeline folder to ``path``."""
        pipe.save_pretrained(path)
        return os.fspath(path)
