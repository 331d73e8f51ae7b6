"""The one-object API of ``denoising_diffusion_pytorch`` (lucidrains' package), thin over the real library:

    from torchdiffusion.simple import Unet, GaussianDiffusion, Trainer

    model = Unet(dim=64, dim_mults=(1, 2, 4, 8))
    diffusion = GaussianDiffusion(model, image_size=128, timesteps=1000)
    loss = diffusion(training_images)          # images (B, C, H, W) in [0, 1]
    loss.backward()
    images = diffusion.sample(batch_size=4)    # (4, C, H, W) in [0, 1]
    Trainer(diffusion, "path/to/images", train_batch_size=16, train_num_steps=20000).train()

``Unet`` builds a :class:`UNet2DModel`, ``GaussianDiffusion`` pairs it with a :class:`DDPMScheduler`, and ``Trainer``
runs :class:`torchdiffusion.training.Trainer`; the results folder is a Diffusers-style pipeline folder.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from torch import nn

from .training.losses import diffusion_loss, loss_weights, sample_noise, training_target

OBJECTIVES = {"pred_noise": "epsilon", "pred_x0": "sample", "pred_v": "v_prediction"}
BETA_SCHEDULES = ("linear", "cosine", "sigmoid")


def Unet(  # noqa: N802 - the name users know
    dim: int = 64,
    dim_mults: tuple[int, ...] = (1, 2, 4, 8),
    channels: int = 3,
    out_dim: int | None = None,
    full_attn_levels: int = 2,
    dropout: float = 0.0,
    **unused: Any,
):
    """A :class:`UNet2DModel` with widths ``dim * m`` for ``m`` in ``dim_mults`` and self-attention on the
    ``full_attn_levels`` lowest resolutions. Other ``denoising_diffusion_pytorch`` options are accepted and ignored."""
    from .models.unet_2d import UNet2DModel

    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if not dim_mults or any(not isinstance(m, int) or m < 1 for m in dim_mults):
        raise ValueError(f"dim_mults must be positive ints, got {dim_mults!r}")
    if channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3 or 4, got {channels!r}")
    if unused:
        warnings.warn(f"Unet ignores options it does not implement: {sorted(unused)}", stacklevel=2)
    widths = tuple(dim * m for m in dim_mults)
    n = len(widths)
    attn = max(0, min(full_attn_levels, n - 1))
    return UNet2DModel(
        in_channels=channels,
        out_channels=out_dim or channels,
        block_out_channels=widths,
        layers_per_block=2,
        down_block_types=tuple("AttnDownBlock2D" if i >= n - attn else "DownBlock2D" for i in range(n)),
        up_block_types=tuple("AttnUpBlock2D" if i < attn else "UpBlock2D" for i in range(n)),
        norm_num_groups=min(32, math.gcd(*widths)),
        attention_head_dim=min(32, widths[-1]),
        dropout=dropout,
    )


def _sigmoid_betas(timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> list[float]:
    """The "sigmoid" schedule of Jabri et al. 2022 (defined on alpha_bar), as betas."""
    t = torch.linspace(0, 1, timesteps + 1, dtype=torch.float64)
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau)), torch.sigmoid(torch.tensor(end / tau))
    ab = (-torch.sigmoid((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    ab = ab / ab[0]
    return (1 - ab[1:] / ab[:-1]).clamp(0, 0.999).tolist()


class GaussianDiffusion(nn.Module):
    """``model`` + a noise schedule of ``timesteps`` steps. ``loss = diffusion(images)`` trains on images
    ``(B, C, image_size, image_size)`` in [0, 1]; ``diffusion.sample(batch_size)`` returns images in [0, 1].

    ``objective``: "pred_noise", "pred_x0" or "pred_v"; ``beta_schedule``: "linear", "cosine" or "sigmoid";
    ``sampling_timesteps`` < ``timesteps`` samples with DDIM in that many steps.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        timesteps: int = 1000,
        sampling_timesteps: int | None = None,
        objective: str = "pred_v",
        beta_schedule: str = "sigmoid",
        offset_noise_strength: float = 0.0,
        min_snr_loss_weight: bool = False,
        min_snr_gamma: float = 5.0,
        auto_normalize: bool = True,
        **unused: Any,
    ) -> None:
        super().__init__()
        from .schedulers.ddpm import DDPMScheduler

        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {list(BETA_SCHEDULES)}, got {beta_schedule!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
            raise ValueError(f"timesteps must be an int >= 2, got {timesteps!r}")
        if unused:
            warnings.warn(f"GaussianDiffusion ignores options it does not implement: {sorted(unused)}", stacklevel=2)
        self.model = model
        if hasattr(model, "register_to_config"):
            model.register_to_config(sample_size=image_size)
        self.image_size, self.num_timesteps = image_size, timesteps
        self.channels = model.config.in_channels if hasattr(model, "config") else 3
        self.sampling_timesteps = sampling_timesteps or timesteps
        self.objective, self.prediction_type = objective, OBJECTIVES[objective]
        self.offset_noise_strength, self.auto_normalize = offset_noise_strength, auto_normalize
        self.loss_weighting = "min_snr" if min_snr_loss_weight else "none"
        self.min_snr_gamma = min_snr_gamma
        schedule: dict[str, Any] = {"beta_schedule": "linear"}
        if beta_schedule == "linear":  # the DDPM betas, rescaled for other step counts
            scale = 1000 / timesteps
            schedule.update(beta_start=min(1e-4 * scale, 0.5), beta_end=min(0.02 * scale, 0.999))
        elif beta_schedule == "cosine":
            schedule = {"beta_schedule": "squaredcos_cap_v2"}
        else:
            schedule["trained_betas"] = _sigmoid_betas(timesteps)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=timesteps, prediction_type=self.prediction_type, clip_sample=True, **schedule
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """The training loss for a batch of images ``(B, C, H, W)`` (in [0, 1] when ``auto_normalize``)."""
        if not isinstance(img, torch.Tensor) or img.ndim != 4:
            raise ValueError(f"img must be a (B, C, H, W) tensor, got {getattr(img, 'shape', type(img).__name__)}")
        if img.shape[-2:] != (self.image_size, self.image_size) or img.shape[1] != self.channels:
            raise ValueError(
                f"img must be (B, {self.channels}, {self.image_size}, {self.image_size}), got {tuple(img.shape)}"
            )
        x0 = img * 2 - 1 if self.auto_normalize else img
        b = x0.shape[0]
        noise = sample_noise(tuple(x0.shape), None, self.offset_noise_strength).to(x0)
        t = torch.randint(0, self.num_timesteps, (b,))
        levels = self.noise_scheduler.schedule  # core.schedules.TrainedSchedule: the forward process
        alpha, sigma = levels.coefficients(t, x0.device)
        x_t = levels.add_noise(x0, noise, t)
        out = self.model(x_t, t.to(x0.device)).sample
        weights = None
        if self.loss_weighting != "none":
            weights = loss_weights(levels.snr(t), "min_snr", self.prediction_type, self.min_snr_gamma)
        return diffusion_loss(out, training_target(self.prediction_type, x0, noise, alpha, sigma), weights)

    @torch.no_grad()
    def sample(self, batch_size: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(batch_size, C, image_size, image_size)`` images in [0, 1] (DDPM over all steps, or DDIM in
        ``sampling_timesteps`` steps)."""
        from .pipelines.ddpm import DDPMPipeline
        from .schedulers.ddim import DDIMScheduler

        scheduler = self.noise_scheduler
        if self.sampling_timesteps < self.num_timesteps:
            scheduler = DDIMScheduler.from_config(scheduler.config)
        was_training = self.model.training
        self.model.eval()
        pipe = DDPMPipeline(unet=self.model, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=batch_size, generator=generator, num_inference_steps=self.sampling_timesteps,
                      output_type="pt").images  # fmt: skip
        self.model.train(was_training)
        return images if self.auto_normalize else images * 2 - 1


class Trainer:
    """Train a :class:`GaussianDiffusion` on a folder of images (or ``"digits"``) with EMA, AMP, periodic samples and
    checkpoints; ``results_folder`` ends up a pipeline folder (``DiffusionPipeline.from_pretrained`` loads it)."""

    def __init__(
        self,
        diffusion_model: GaussianDiffusion,
        folder: str,
        *,
        train_batch_size: int = 16,
        gradient_accumulate_every: int = 1,
        augment_horizontal_flip: bool = True,
        train_lr: float = 1e-4,
        train_num_steps: int = 100000,
        ema_update_every: int = 10,
        ema_decay: float = 0.995,
        adam_betas: tuple[float, float] = (0.9, 0.99),
        save_and_sample_every: int = 1000,
        num_samples: int = 25,
        results_folder: str = "./results",
        amp: bool = False,
        mixed_precision_type: str = "fp16",
        calculate_fid: bool = True,
        max_grad_norm: float = 1.0,
        num_fid_samples: int = 1000,
        **unused: Any,
    ) -> None:
        from .training.config import TrainingConfig
        from .training.sources import load_training_dataset

        if not isinstance(diffusion_model, GaussianDiffusion):
            raise TypeError(f"diffusion_model must be a GaussianDiffusion, got {type(diffusion_model).__name__}")
        if isinstance(ema_update_every, bool) or not isinstance(ema_update_every, int) or ema_update_every < 1:
            raise ValueError(f"ema_update_every must be a positive int, got {ema_update_every!r}")
        if unused:
            warnings.warn(f"Trainer ignores options it does not implement: {sorted(unused)}", stacklevel=2)
        self.diffusion = diffusion_model
        self.calculate_fid, self.num_fid_samples, self.folder = calculate_fid, num_fid_samples, folder
        self.dataset = load_training_dataset(
            folder, diffusion_model.image_size, channels=diffusion_model.channels, random_flip=augment_horizontal_flip
        )
        self.config = TrainingConfig(
            output_dir=str(results_folder),
            max_steps=train_num_steps,
            batch_size=train_batch_size,
            gradient_accumulation_steps=gradient_accumulate_every,
            learning_rate=train_lr,
            lr_schedule="constant",
            lr_warmup_steps=0,
            adam_betas=tuple(adam_betas),
            max_grad_norm=max_grad_norm,
            mixed_precision=mixed_precision_type if amp else "no",
            prediction_type=diffusion_model.prediction_type,
            loss_weighting=diffusion_model.loss_weighting,
            snr_gamma=diffusion_model.min_snr_gamma,
            noise_offset=diffusion_model.offset_noise_strength,
            ema_decay=ema_decay ** (1 / ema_update_every),  # the same averaging horizon, updated every step
            ema_power=2 / 3,
            checkpointing_steps=save_and_sample_every,
            sample_steps=save_and_sample_every,
            num_sample_images=num_samples,
            sample_inference_steps=min(50, diffusion_model.sampling_timesteps),
        )
        self.metrics: dict[str, float] = {}
        self._trainer = None

    def train(self) -> None:
        """Train, write samples/checkpoints/pipeline into ``results_folder``; the EMA weights end up in
        ``trainer.ema_model`` (a GaussianDiffusion) and, with ``calculate_fid``, scores in ``trainer.metrics``."""
        from .training.trainer import Trainer as _Trainer

        d = self.diffusion
        self._trainer = _Trainer(d.model, d.noise_scheduler, self.dataset, self.config)
        self._trainer.train()
        self.ema_model = copy.copy(d)  # same settings, its own module table holding the EMA weights
        self.ema_model._modules = dict(d._modules)
        self.ema_model.model = self._trainer.ema_model()
        if self.calculate_fid:
            self.metrics = self._score()

    def _score(self) -> dict[str, float]:
        from .training import metrics

        n = min(self.num_fid_samples, len(self.dataset))
        fake = self.ema_model.sample(batch_size=n)
        real = torch.stack([self.dataset[i]["images"] for i in range(n)]) / 2 + 0.5
        try:
            return {"fid": metrics.fid(fake, real)}
        except RuntimeError as err:
            if self.folder == "digits":
                return metrics.DigitsYardstick().score(fake, value_range=(0, 1))
            warnings.warn(f"calculate_fid: {err}", stacklevel=2)
            return {}
