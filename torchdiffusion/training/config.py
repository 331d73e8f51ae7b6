"""TrainingConfig: every knob of :class:`~torchdiffusion.training.Trainer`, checked at the door."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..core.prediction import PREDICTION_TYPES
from .losses import LOSS_WEIGHTINGS

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "cosine", "linear")
REPORT_TO = (None, "tensorboard", "wandb")



def default_channels_last(latent: bool, mixed_precision: str, device: Any) -> bool:
    """The layout ``channels_last=None`` picks for a run on ``device``. On the CPU (2-core AVX-512 Zen 5, December
    2026) NHWC trains a pixel-space UNet 5 % faster in fp32, but NCHW wins under bf16 autocast (18 %) and on
    ``latent`` models (their maps are 1/8 of the image's and smaller: oneDNN's NHWC backward kernels lose there,
    1.6x on SD 1.5's UNet at 256 px). On GPUs channels-last, as before."""
    if getattr(device, "type", device) != "cpu":
        return True
    return not latent and mixed_precision == "no"

@dataclass
class TrainingConfig:
    """Settings of a training run. ``batch_size`` is per process; one optimizer step sees
    ``batch_size * gradient_accumulation_steps * num_processes`` images."""

    output_dir: str = "outputs/train"
    max_steps: int = 1500
    batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    lr_warmup_steps: int = 100
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    channels_last: bool | None = None  # None: measured choice (CPU: NHWC for pixel-space fp32, else NCHW; GPU: NHWC)
    gradient_checkpointing: bool = False
    # the objective
    prediction_type: str | None = None  # None: the noise scheduler's
    loss_weighting: str = "none"
    snr_gamma: float = 5.0
    noise_offset: float = 0.0
    class_dropout_prob: float = 0.1  # class-conditional models: share of labels replaced by the null class
    caption_dropout_prob: float = 0.0  # text-to-image: share of captions replaced by the empty caption
    # EMA
    use_ema: bool = True
    ema_decay: float = 0.999
    ema_warmup: bool = True
    ema_inv_gamma: float = 1.0
    ema_power: float = 3 / 4
    ema_update_after_step: int = 0
    # output
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    sample_steps: int = 500
    num_sample_images: int = 16
    sample_inference_steps: int = 25
    sample_guidance_scale: float = 2.0
    validation_prompts: tuple[str, ...] = ()  # text-to-image: prompts of the validation grid (one row each)
    num_validation_images: int = 4  # text-to-image: images per validation prompt
    log_steps: int = 10
    progress_bar: bool = True
    seed: int = 0
    resume_from_checkpoint: str | None = None
    dataloader_num_workers: int = 0
    time_limit_minutes: float | None = None  # after a few steps, lower max_steps to finish in about this time
    push_to_hub: bool = False  # upload the final pipeline folder (rank 0) to hub_model_id
    hub_model_id: str | None = None  # default: the output folder's name
    hub_private_repo: bool | None = None
    hub_token: str | None = None
    report_to: str | None = None  # "tensorboard" or "wandb": accelerate's tracker (the package must be installed)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def replace(self, **changes: Any) -> TrainingConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown training option(s) {unknown}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        def integer(name: str, minimum: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")

        def number(name: str, lo: float, hi: float = math.inf, open_lo: bool = False) -> None:
            v = getattr(self, name)
            bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            if bad or v < lo or v > hi or (open_lo and v == lo):
                raise ValueError(f"{name} must be a number in {'(' if open_lo else '['}{lo}, {hi}], got {v!r}")

        def choice(name: str, allowed: tuple) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")

        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"output_dir must be a non-empty path string, got {self.output_dir!r}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpointing_steps", "sample_steps"):
            integer(name, 1)
        for name in ("lr_warmup_steps", "num_sample_images", "sample_inference_steps", "log_steps"):
            integer(name, 0 if name != "log_steps" else 1)
        integer("ema_update_after_step", 0)
        integer("dataloader_num_workers", 0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.checkpoints_total_limit is not None:
            integer("checkpoints_total_limit", 1)
        number("learning_rate", 0.0, open_lo=True)
        number("adam_epsilon", 0.0, open_lo=True)
        number("weight_decay", 0.0)
        number("snr_gamma", 0.0, open_lo=True)
        number("noise_offset", 0.0)
        number("class_dropout_prob", 0.0, 1.0)
        number("caption_dropout_prob", 0.0, 1.0)
        integer("num_validation_images", 0)
        prompts = self.validation_prompts
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts or ()):
            raise ValueError(f"validation_prompts must be a list of strings, got {prompts!r}")
        self.validation_prompts = tuple(prompts or ())
        number("ema_decay", 0.0, 1.0)
        number("ema_inv_gamma", 0.0, open_lo=True)
        number("ema_power", 0.0, open_lo=True)
        number("sample_guidance_scale", 0.0)
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            got = self.channels_last
            raise ValueError(f"channels_last must be True, False or None (the task's choice), got {got!r}")
        if self.max_grad_norm is not None:
            number("max_grad_norm", 0.0, open_lo=True)
        if self.time_limit_minutes is not None:
            number("time_limit_minutes", 0.0, open_lo=True)
        if self.hub_model_id is not None:
            from ..hub import check_repo_id

            check_repo_id(self.hub_model_id, "hub_model_id")
        betas = self.adam_betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {betas!r}")
        self.adam_betas = (float(betas[0]), float(betas[1]))
        choice("mixed_precision", MIXED_PRECISION)
        choice("lr_schedule", LR_SCHEDULES)
        choice("loss_weighting", LOSS_WEIGHTINGS)
        choice("report_to", REPORT_TO)
        if self.prediction_type is not None:
            choice("prediction_type", PREDICTION_TYPES)
        if self.resume_from_checkpoint is not None and not isinstance(self.resume_from_checkpoint, str):
            raise ValueError(
                f"resume_from_checkpoint must be 'latest', a folder path or None, got {self.resume_from_checkpoint!r}"
            )


def lr_lambda(config: TrainingConfig):
    """Multiplier of the base learning rate at optimizer step ``s`` (0-based): linear warm-up over
    ``lr_warmup_steps``, then constant, cosine or linear decay to 0 at ``max_steps``."""
    warmup, kind = config.lr_warmup_steps, config.lr_schedule

    def factor(s: int) -> float:
        total = config.max_steps  # read at each step: a time limit may lower it during the run
        if s < warmup:
            return (s + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor
