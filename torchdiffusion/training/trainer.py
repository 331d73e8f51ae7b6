"""Trainer: a diffusion model + noise scheduler + data -> a trained pipeline folder, on one process or many.

Built on ``accelerate`` (imported when a run starts, in :mod:`.accelerator`): the same code runs alone, under
``accelerate launch`` and under ``torchrun`` (DDP: NCCL on CUDA, gloo on CPU). Everything random in a step is drawn
from generators seeded by ``(seed, step)`` for the *global* batch, each process taking its slice, so a run is
reproducible, resumable to the bit, and gives the same loss on N processes as on one with the same global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.schedules import TrainedSchedule
from . import checkpoint as ckpt
from . import outputs
from .accelerator import make_accelerator
from .config import TrainingConfig, default_channels_last, lr_lambda
from .data import BatchPlan, iterate_batches, mix_seed
from .ema import EMAModel
from .losses import diffusion_loss, draw_step_noise, loss_weights, training_target
from .tasks import PixelTask


@dataclass
class TrainingResult:
    """``output_dir`` (a pipeline folder), the final ``step``, the per-step ``losses`` (global mean)."""

    output_dir: str
    step: int
    losses: list[float]
    pipeline_path: str | None


def _model_output(out: Any) -> torch.Tensor:
    """The predicted tensor from a model's output (tensor, tuple, or output object with ``sample``)."""
    if not isinstance(out, torch.Tensor):
        out = out.sample if hasattr(out, "sample") else out[0]
    # accelerate's fp32 output wrapper rebuilds an output object from a dict, nesting it one level deeper
    while isinstance(out, dict) and "sample" in out:
        out = out["sample"]
    return out


class Trainer:
    """Train ``model`` (e.g. a :class:`UNet2DModel`) to denoise ``dataset`` items under ``noise_scheduler``.

    ``model``: an ``nn.Module`` (a pixel-space model: :class:`~.tasks.PixelTask`) or a task object such as
    :class:`~torchdiffusion.training.text_to_image.TextToImageTask` (which brings its own noise scheduler).
    ``dataset``: a :class:`~torchdiffusion.training.data.TrainingDataset` (or any map-style data set whose items
    are ``{"images": (C, H, W) in [-1, 1], "labels": int}``, plus ``"captions"`` for text-to-image). A pixel model
    is class-conditional when its config has ``num_class_embeds``; labels are then replaced by the null class
    ``num_classes`` with probability ``class_dropout_prob`` so the exported pipeline can use classifier-free
    guidance. ``config``: a :class:`TrainingConfig`; keyword arguments override its fields.
    """

    def __init__(
        self,
        model: Any,
        noise_scheduler: Any = None,
        dataset: Any = None,
        config: TrainingConfig | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **overrides: Any,
    ) -> None:
        config = (config or TrainingConfig()).replace(**overrides) if overrides else (config or TrainingConfig())
        if isinstance(model, torch.nn.Module):
            task = None
        elif hasattr(model, "inputs") and isinstance(getattr(model, "model", None), torch.nn.Module):
            task, noise_scheduler = model, noise_scheduler or model.noise_scheduler
        else:
            raise TypeError(f"model must be a torch.nn.Module or a training task, got {type(model).__name__}")
        if not hasattr(noise_scheduler, "alphas_cumprod"):
            raise TypeError(
                "noise_scheduler must be a DDPM-style scheduler with alphas_cumprod, "
                f"got {type(noise_scheduler).__name__}"
            )
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__") or len(dataset) == 0:
            raise ValueError("dataset must be a non-empty map-style data set (len() and [index])")
        self.task = task or PixelTask(model, dataset, config.class_dropout_prob)
        self.config = config
        scheduler_type = noise_scheduler.config.get("prediction_type", "epsilon")
        self.prediction_type = config.prediction_type or scheduler_type
        if self.prediction_type != scheduler_type:  # the exported scheduler must decode what the model predicts
            noise_scheduler = type(noise_scheduler).from_config(
                noise_scheduler.config, prediction_type=self.prediction_type
            )
        self.model, self.noise_scheduler, self.dataset = self.task.model, noise_scheduler, dataset
        self.num_classes = int(getattr(dataset, "num_classes", 0) or 0)
        self.class_conditional = getattr(self.task, "class_conditional", False)
        self.null_class_label = getattr(self.task, "null_class_label", None)
        self.alphas_cumprod = torch.as_tensor(noise_scheduler.alphas_cumprod, dtype=torch.float64).cpu()
        self.noise_levels = TrainedSchedule.from_alphas_cumprod(self.alphas_cumprod)
        self._user_optimizer = optimizer
        self.losses: list[float] = []
        self.step = 0

    # ---- set-up -------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        self.accelerator = acc = make_accelerator(cfg.mixed_precision, cfg.report_to, cfg.output_dir)
        self.rank, self.world_size, self.is_main = acc.process_index, acc.num_processes, acc.is_main_process
        model = self.model.to(acc.device)
        if cfg.channels_last is None:
            layout = default_channels_last(self.task.latent, cfg.mixed_precision, acc.device)
            self.config = cfg = dataclasses.replace(cfg, channels_last=layout)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
            model.enable_gradient_checkpointing()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        if self._user_optimizer is not None:
            optimizer = self._user_optimizer
        else:
            fused = acc.device.type in ("cpu", "cuda")
            optimizer = torch.optim.AdamW(
                params, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_epsilon,
                weight_decay=cfg.weight_decay, fused=fused,
            )  # fmt: skip
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        self.ema = None
        if cfg.use_ema and self.task.supports_ema:
            self.ema = EMAModel(
                model, decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup, inv_gamma=cfg.ema_inv_gamma,
                power=cfg.ema_power, update_after_step=cfg.ema_update_after_step,
            )  # fmt: skip
        self.wrapped, self.optimizer = acc.prepare(model, optimizer)
        # drop accelerate's autocast patch of forward (copies of the model for sampling stay plain modules);
        # the training forward runs under acc.autocast() instead
        self.unwrapped = acc.unwrap_model(self.wrapped, keep_fp32_wrapper=False)
        self.train_data = self.task.setup(acc, cfg, self.dataset)  # e.g. cached latents instead of images
        self.plan = BatchPlan(len(self.train_data), cfg.batch_size, cfg.seed, self.world_size, self.rank)
        self.output_dir = cfg.output_dir
        self.checkpoint_dir = os.path.join(cfg.output_dir, "checkpoints")
        if self.is_main:
            os.makedirs(os.path.join(cfg.output_dir, "samples"), exist_ok=True)

    # ---- state --------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs (see :mod:`~torchdiffusion.training.checkpoint`)."""
        names = [n for n, _ in self.unwrapped.named_parameters()]
        trained = {n for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        model_state = dict(self.unwrapped.state_dict())
        if len(trained) < len(names):  # adapters on a frozen model: the frozen weights come from the base model
            model_state = {k: v for k, v in model_state.items() if k in trained}
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        np_state = np.random.get_state()
        scaler = getattr(self.accelerator, "scaler", None)
        return {
            "model": model_state,
            "ema": dict(zip(names, self.ema.shadow_params)) if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "random_states": rng,
            "trainer": {
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ema_optimization_step": self.ema.optimization_step if self.ema else None,
                "python_random": random.getstate(),
                "numpy_random": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                "losses": self.losses,
                "world_size": self.world_size,
                "config": self.config.to_dict(),
            },
        }

    def load_state(self, folder: str) -> None:
        """Restore a checkpoint written by :meth:`state` / :func:`~.checkpoint.save_checkpoint`."""
        state = ckpt.load_checkpoint(folder)
        trainer = state["trainer"]
        trained = [n for n, p in self.unwrapped.named_parameters() if p.requires_grad]
        if len(trained) < len(list(self.unwrapped.parameters())):
            missing, unexpected = set(trained) - set(state["model"]), set(state["model"]) - set(trained)
            if missing or unexpected:
                raise ValueError(
                    f"checkpoint {folder!r} does not fit the trained parameters: missing {sorted(missing)[:5]}, "
                    f"unexpected {sorted(unexpected)[:5]}"
                )
            self.unwrapped.load_state_dict(state["model"], strict=False)
        else:
            self.unwrapped.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            names = [n for n, _ in self.unwrapped.named_parameters()]
            self.ema.load_state_dict(
                {
                    "shadow_params": [state["ema"][n] for n in names],
                    "optimization_step": trainer["ema_optimization_step"],
                }
            )
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(trainer["step"])
        # the LR schedule is a function of the step under the *current* config (so max_steps may be extended)
        factor = lr_lambda(self.config)(self.step)
        self.lr_scheduler.last_epoch = self.step
        for group, base in zip(self.optimizer.param_groups, self.lr_scheduler.base_lrs):
            group["lr"] = base * factor
        self.lr_scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and trainer.get("scaler"):
            scaler.load_state_dict(trainer["scaler"])
        rng = state["random_states"] or {}
        if "torch_cpu" in rng:
            torch.set_rng_state(rng["torch_cpu"])
        random.setstate((trainer["python_random"][0], tuple(trainer["python_random"][1]), trainer["python_random"][2]))
        n = trainer["numpy_random"]
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
        self.losses = list(trainer["losses"])

    # ---- what a run hands out (see :mod:`~torchdiffusion.training.outputs`) ------------------------------------
    def ema_model(self) -> torch.nn.Module:
        """A copy of the model holding the EMA weights (the model itself without EMA), in eval mode."""
        return outputs.ema_model(self.unwrapped, self.ema)

    def pipeline(self) -> Any:
        """The pipeline of the EMA model: :class:`DDPMPipeline` or :class:`ClassConditionalPipeline` (pixel models),
        :class:`StableDiffusionPipeline` (text-to-image)."""
        return self.task.pipeline(self.ema_model(), self.noise_scheduler)

    def sample_images(self, num_images: int, num_inference_steps: int, seed: int = 0) -> torch.Tensor:
        """``(N, C, H, W)`` samples in [-1, 1] from the EMA model with the default sampler of ``torchdiffusion
        generate`` (stochastic DPM-Solver++; fixed seeds: comparable grids)."""
        return self._sample_grid(num_images, num_inference_steps, seed)[0]

    def _sample_grid(self, num_images: int, num_inference_steps: int, seed: int) -> tuple[torch.Tensor, int | None]:
        steps = max(1, min(num_inference_steps, len(self.alphas_cumprod) // 2))
        config = self.config.replace(num_sample_images=num_images, seed=seed)
        return self.task.sample_grid(self.pipeline(), config, steps)

    def _write_samples(self) -> None:
        cfg = self.config
        if self.task.wants_samples(cfg):
            images, cols = self._sample_grid(cfg.num_sample_images, cfg.sample_inference_steps, cfg.seed)
            outputs.write_sample_grid(images, self.output_dir, self.step, cols)
            if cfg.report_to:
                outputs.log_grid(self.accelerator, images, self.step)

    def _write_log(self, history: list[dict], started: float) -> None:
        outputs.write_log(self.output_dir, self.losses, history, started, self.step, self.world_size, self.config)

    def save_pipeline(self, path: str | None = None) -> str:
        """Write what the run hands out to ``path`` (default: the output folder itself): the EMA pipeline folder
        (``model_index.json``, ``unet/``, ``scheduler/``...), or for LoRA training the LoRA file and model card."""
        return self.task.save(self.pipeline(), path or self.output_dir, self.step, self.config)

    def push_to_hub(self) -> Any:
        """Upload what :meth:`save_pipeline` writes (the EMA pipeline, or the LoRA file and its model card; not the
        checkpoints) to ``hub_model_id`` (default: the output folder's name)."""
        pipe = self.pipeline()
        save = lambda folder: self.task.save(pipe, folder, self.step, self.config)  # noqa: E731
        return outputs.push_output(save, self.output_dir, self.step, self.config)

    # ---- one step -----------------------------------------------------------------------------------------
    def _micro_batch(self, batch: dict[str, Any], micro_step: int) -> torch.Tensor:
        """Loss of this process's part of micro-batch ``micro_step`` (noise etc. drawn for the global batch)."""
        cfg, device = self.config, self.accelerator.device
        task_loss = getattr(self.task, "loss", None)
        if task_loss is not None:  # a task with its own objective (consistency distillation): same draws' contract
            return task_loss(self.wrapped, batch, micro_step, self.accelerator, cfg)
        shape = self.task.sample_shape(batch)
        b = len(next(iter(batch.values())))
        noise, timesteps, drop, latent_noise = draw_step_noise(
            cfg.seed, micro_step, (b * self.world_size, *shape), len(self.alphas_cumprod), cfg.noise_offset,
            self.task.dropout_prob(cfg), self.task.latent, part=slice(self.rank * b, (self.rank + 1) * b),
        )  # fmt: skip
        x0, kwargs = self.task.inputs(batch, drop, latent_noise, device)
        noise = noise.to(device)
        alpha_t, sigma_t = self.noise_levels.coefficients(timesteps, device)
        x_t = self.noise_levels.add_noise(x0, noise, timesteps)
        if cfg.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with self.accelerator.autocast():
            out = _model_output(self.wrapped(x_t, timesteps.to(device), **kwargs))
        target = training_target(self.prediction_type, x0, noise, alpha_t, sigma_t)
        weights = None
        if cfg.loss_weighting != "none":
            snr_t = self.noise_levels.snr(timesteps).to(device)
            weights = loss_weights(snr_t, cfg.loss_weighting, self.prediction_type, cfg.snr_gamma)
        return diffusion_loss(out, target, weights)

    def _optimizer_step(self, batches) -> float:
        cfg, acc = self.config, self.accelerator
        accum = cfg.gradient_accumulation_steps
        torch.manual_seed(mix_seed(cfg.seed, "torch", self.rank, self.step))  # dropout etc.: a function of the step
        total = torch.zeros((), device=acc.device)
        for a in range(accum):
            micro_step = self.step * accum + a
            sync = a == accum - 1 or self.world_size == 1
            with contextlib.nullcontext() if sync else acc.no_sync(self.wrapped):
                loss = self._micro_batch(next(batches), micro_step)
                acc.backward(loss / accum)
            total += loss.detach() / accum
        if cfg.max_grad_norm is not None:
            acc.clip_grad_norm_(self.wrapped.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.unwrapped)
        if self.world_size > 1:
            total = acc.reduce(total, reduction="mean")
        self.step += 1
        return float(total)

    def _fit_time_limit(self, seconds: float, steps: int, started: float) -> None:
        """Lower ``max_steps`` so the run ends within ``time_limit_minutes`` (measured speed, with a margin for
        sampling and saving)."""
        cfg = self.config
        left = cfg.time_limit_minutes * 60 - (time.time() - started) - 10
        fit = self.step + int(max(0.0, left) / max(seconds / steps, 1e-6))
        if fit < cfg.max_steps:
            cfg.max_steps = max(self.step + 1, fit)
            cfg.checkpointing_steps = min(cfg.checkpointing_steps, cfg.max_steps)

    # ---- the loop -----------------------------------------------------------------------------------------
    def train(self) -> TrainingResult:
        """Run to ``max_steps`` (resuming first if asked); returns where the pipeline folder is."""
        from tqdm.auto import tqdm

        self._setup()
        cfg, acc = self.config, self.accelerator
        resume = ckpt.resolve_resume(cfg.resume_from_checkpoint, self.checkpoint_dir)
        if resume is not None:
            self.load_state(resume)
        accum = cfg.gradient_accumulation_steps
        batches = iterate_batches(self.train_data, self.plan, self.step * accum, cfg.dataloader_num_workers)
        images_per_step = cfg.batch_size * accum * self.world_size
        show_bar = cfg.progress_bar and self.is_main

        def open_bar():  # opened once the step budget is final, so its total never jumps
            return tqdm(total=cfg.max_steps, initial=self.step, disable=not show_bar, desc="training", unit="step",
                        dynamic_ncols=True)  # fmt: skip

        if cfg.report_to:
            scalars = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
            acc.init_trackers("torchdiffusion-train", config=scalars)
        history: list[dict] = []
        started = last_time = time.time()
        last_step = self.step
        budget_checked, first_step, probe_time = cfg.time_limit_minutes is None, self.step, 0.0
        # under a time limit the first steps measure the speed (no bar yet), then max_steps is fitted to the time
        bar = open_bar() if budget_checked else tqdm(disable=True)
        while self.step < cfg.max_steps:
            if not budget_checked and self.step - first_step == 2:
                probe_time = time.time()  # the first steps are slower (allocation): measure from the third on
            elif not budget_checked and self.step - first_step == 12:
                self._fit_time_limit(time.time() - probe_time, 10, started)
                budget_checked = True
                bar = open_bar()
            loss = self._optimizer_step(batches)
            self.losses.append(loss)
            bar.update(1)
            step = self.step
            if step % cfg.log_steps == 0 or step == cfg.max_steps:
                now = time.time()
                rate = (step - last_step) * images_per_step / max(now - last_time, 1e-9)
                last_time, last_step = now, step
                recent = self.losses[-cfg.log_steps :]
                entry = {
                    "step": step,
                    "loss": round(sum(recent) / len(recent), 5),
                    "lr": self.lr_scheduler.get_last_lr()[0],
                    "images_per_s": round(rate, 1),
                    "epoch": round(self.plan.epoch_of(step * accum), 2),
                }
                history.append(entry)
                if cfg.report_to:
                    acc.log({k: v for k, v in entry.items() if k != "step"}, step=step)
                bar.set_postfix(loss=f"{entry['loss']:.4f}", img_s=f"{rate:.0f}")
                if self.is_main and (step % (cfg.log_steps * 10) == 0 or step == cfg.max_steps):
                    self._write_log(history, started)
            if step % cfg.checkpointing_steps == 0 and step < cfg.max_steps and self.is_main:
                ckpt.save_checkpoint(self.checkpoint_dir, step, self.state(), cfg.checkpoints_total_limit)
            if step % cfg.sample_steps == 0 and self.is_main:
                self._write_samples()
        bar.close()
        acc.wait_for_everyone()
        path = None
        if self.is_main:
            self._write_log(history, started)
            if not os.path.isdir(os.path.join(self.checkpoint_dir, ckpt.checkpoint_name(self.step))):
                ckpt.save_checkpoint(self.checkpoint_dir, self.step, self.state(), cfg.checkpoints_total_limit)
            if self.step % cfg.sample_steps != 0:
                self._write_samples()
            path = self.save_pipeline()
            if cfg.push_to_hub:
                self.push_to_hub()
        if cfg.report_to:
            acc.end_training()
        acc.wait_for_everyone()
        return TrainingResult(self.output_dir, self.step, list(self.losses), path)
