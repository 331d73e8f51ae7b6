"""Latent consistency distillation into a LoRA (LCM-LoRA: Luo et al. 2023, "Latent Consistency Models" and
"LCM-LoRA: A Universal Stable-Diffusion Acceleration Module"): LoRA adapters on a Stable Diffusion UNet learn to
map any point of the teacher's guided probability-flow ODE straight to its end, so the pipeline samples in 2-4
steps with :class:`~torchdiffusion.schedulers.lcm.LCMScheduler` and ``guidance_scale=1`` (guidance is baked in).

One optimizer step, per latent ``x0`` (``B, 4, h, w``) of a captioned image:

1. a solver index ``n`` picks ``t = (n + 1) k - 1`` on the DDIM skip grid (``num_ddim_timesteps`` points over the
   ``T`` training steps, ``k = T / num_ddim_timesteps``) and ``s = max(t - k, 0)``; ``x_t = a_t x0 + s_t eps``;
2. the **teacher** (the same UNet with its adapters switched off: the frozen base) runs one DDIM step from ``t``
   to ``s`` with classifier-free guidance of scale ``w ~ U[w_min, w_max]`` (the pipelines' convention:
   ``uncond + w (cond - uncond)``, the unconditional branch on the empty caption), on both ``x0_hat`` and
   ``eps_hat``: ``x_s = a_s x0_hat + s_s eps_hat``;
3. the **student** (base + adapters) gives the consistency output ``f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t)``
   with ``c_skip = sd^2 / ((10 t)^2 + sd^2)``, ``c_out = 10 t / sqrt((10 t)^2 + sd^2)``, ``sd = 0.5`` (so
   ``f(x, 0) = x``: the boundary condition); the **target** is the student itself at ``(x_s, s)`` without
   gradient (LCM-LoRA keeps no separate EMA target network);
4. loss: pseudo-Huber ``mean(sqrt((f(x_t, t) - target)^2 + c^2) - c)``, ``c = huber_c``.

Why a task of the shared :class:`~torchdiffusion.training.trainer.Trainer` and not a loop of its own: everything
around the step is the same as for text-to-image LoRA training (accelerate, the seeded per-step draws, gradient
accumulation, clipping, the LR schedule, checkpoints and bit-exact resume, the time limit, logs, the validation
grid, the Hub upload), and so are the data side (frozen VAE and text encoder, the latent cache) and the output
(Diffusers-layout LoRA file). Only the objective differs, so the Trainer gained one hook: a task that has a
``loss(model, batch, micro_step, accelerator, config)`` method computes the micro-batch loss itself; tasks without
it run exactly as before.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..core import prediction as P
from ..core import solvers as S
from ..core.schedules import TrainedSchedule
from .data import mix_seed
from .losses import draw_step_noise
from .text_to_image import UNET_LORA_TARGETS, TextConditionedUNet, TextToImageTask

LCM_WIDE_TARGETS = (*UNET_LORA_TARGETS, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                    "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")  # fmt: skip
"""The wider choice of modules (``lora_targets="all"``): attention, feed-forward, projections, every
convolution and the time-embedding projections, as in Diffusers' LCM-LoRA script."""
LORA_TARGET_SETS = {"attention": UNET_LORA_TARGETS, "all": LCM_WIDE_TARGETS}


def boundary_scalings(
    timesteps: torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` ``(B,)`` float32 of the consistency function at integer ``timesteps`` ``(B,)``
    (computed in float64; ``c_skip(0) = 1``, ``c_out(0) = 0``)."""
    c_skip, c_out = S.consistency_scalings(timesteps.double(), timestep_scaling, sigma_data)
    return c_skip.float(), c_out.float()


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """``mean(sqrt((prediction - target)^2 + c^2) - c)`` in float32 (quadratic below ``c``, linear above)."""
    diff = prediction.float() - target.float()
    return (torch.sqrt(diff.pow(2) + c * c) - c).mean()


def solver_timesteps(num_train_timesteps: int, num_ddim_timesteps: int) -> torch.Tensor:
    """The DDIM skip grid ``(N,)`` long: ``(n + 1) k - 1`` for ``n < N``, ``k = T / N`` (LCMScheduler's
    ``original_inference_steps`` grid)."""
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * k - 1


@contextlib.contextmanager
def adapters_off(unet: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``unet`` as its base model (every LoRA layer bypassed) inside the block."""
    from ..loaders import peft_utils

    peft_utils.enable_adapters(unet, False)
    try:
        yield unet
    finally:
        peft_utils.enable_adapters(unet, True)


def _number(value: Any, name: str, low: float, open_low: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or value < low or (open_low and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if open_low else '>='} {low}, got {value!r}")
    return float(value)


class LatentConsistencyTask(TextToImageTask):
    """Distil the guided teacher ``pipeline`` (a Stable Diffusion pipeline, folder or Hub id) into LoRA adapters of
    ``lora_rank`` (``lora_alpha``: default the rank) on its UNet, on ``lora_targets`` (``"attention"``: the
    text-to-image LoRA's ``to_q/k/v/out``; ``"all"``: :data:`LCM_WIDE_TARGETS`; or a list of module names).
    ``w_min``/``w_max``: range of the teacher's guidance scale; ``num_ddim_timesteps``: points of the solver grid
    (must divide the teacher's training steps); ``timestep_scaling``: of the boundary scalings; ``huber_c``: of
    the pseudo-Huber loss. ``cache_latents``, ``seed`` and ``load_kwargs``: as :class:`TextToImageTask`."""

    def __init__(
        self,
        pipeline: Any,
        lora_rank: int = 16,
        lora_alpha: float | None = None,
        w_min: float = 3.0,
        w_max: float = 12.0,
        num_ddim_timesteps: int = 50,
        timestep_scaling: float = 10.0,
        huber_c: float = 1e-3,
        lora_targets: str | Sequence[str] = "attention",
        cache_latents: bool | None = None,
        seed: int = 0,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if lora_rank is None:
            raise ValueError("lora_rank must be a positive int: consistency distillation trains LoRA adapters only")
        self.w_min, self.w_max = _number(w_min, "w_min", 1.0), _number(w_max, "w_max", 1.0)
        if self.w_min > self.w_max:
            raise ValueError(f"w_min={w_min} must not exceed w_max={w_max}")
        if isinstance(num_ddim_timesteps, bool) or not isinstance(num_ddim_timesteps, int) or num_ddim_timesteps < 1:
            raise ValueError(f"num_ddim_timesteps must be a positive int, got {num_ddim_timesteps!r}")
        self.timestep_scaling = _number(timestep_scaling, "timestep_scaling", 0.0, open_low=True)
        self.huber_c = _number(huber_c, "huber_c", 0.0, open_low=True)
        if isinstance(lora_targets, str):
            if lora_targets not in LORA_TARGET_SETS:
                raise ValueError(f"lora_targets must be one of {sorted(LORA_TARGET_SETS)} or a list of module names, "
                                 f"got {lora_targets!r}")  # fmt: skip
            lora_targets = LORA_TARGET_SETS[lora_targets]
        if not lora_targets or not all(isinstance(t, str) and t for t in lora_targets):
            raise ValueError(f"lora_targets must name at least one module, got {lora_targets!r}")
        self.unet_lora_targets = tuple(lora_targets)
        super().__init__(pipeline, lora_rank, lora_alpha, False, cache_latents, seed, load_kwargs)
        steps = int(self.noise_scheduler.config.num_train_timesteps)
        if num_ddim_timesteps > steps or steps % num_ddim_timesteps:
            raise ValueError(f"num_ddim_timesteps={num_ddim_timesteps} must divide the teacher's {steps} training "
                             "timesteps (e.g. 50 for 1000)")  # fmt: skip
        self.num_ddim_timesteps, self.skip = num_ddim_timesteps, steps // num_ddim_timesteps
        self.grid = solver_timesteps(steps, num_ddim_timesteps)
        self.schedule = TrainedSchedule.from_alphas_cumprod(self.noise_scheduler.alphas_cumprod)
        self.prediction_type = self.noise_scheduler.config.get("prediction_type", "epsilon")
        self.uncond: torch.Tensor | None = None

    # ---- the run ------------------------------------------------------------------------------------------------
    def dropout_prob(self, config: Any) -> float:
        return 0.0  # the captions stay: the teacher's guidance already pairs each with the empty caption

    def setup(self, accelerator: Any, config: Any, dataset: Any) -> Any:
        """As :meth:`TextToImageTask.setup`, plus the empty caption's embedding ``(1, tokens, dim)`` (the teacher's
        unconditional branch); the teacher's prediction type is the only one the student can learn."""
        if config.prediction_type not in (None, self.prediction_type):
            raise ValueError(f"prediction_type={config.prediction_type!r}: a distilled student predicts what its "
                             f"teacher does ({self.prediction_type!r}); leave prediction_type unset")  # fmt: skip
        data = super().setup(accelerator, config, dataset)
        if self.cache is not None:
            self.uncond = self.cache.embeddings[self.cache.empty_index][None].to(accelerator.device)
        else:
            self.uncond = self.encoders.embed([""])
        return data

    def consistency(self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``f(sample, t) = c_skip(t) sample + c_out(t) x0_hat``: the consistency function ``(B, C, h, w)`` from
        a UNet output at integer ``timesteps`` ``(B,)``."""
        alpha, sigma = self.schedule.coefficients(timesteps, sample.device)
        x0, _ = P.to_x0_eps(model_output.float(), sample.float(), P.expand_as(alpha, sample.float()),
                            P.expand_as(sigma, sample.float()), self.prediction_type)  # fmt: skip
        c_skip, c_out = boundary_scalings(timesteps.to(sample.device), self.timestep_scaling)
        return P.expand_as(c_skip, x0) * sample.float() + P.expand_as(c_out, x0) * x0

    @torch.no_grad()
    def teacher_step(
        self, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor, guidance: torch.Tensor
    ) -> torch.Tensor:
        """One guided DDIM step of the frozen base UNet from ``x_t`` at ``t`` to ``s`` (``(B,)`` each):
        ``a_s x0_hat + s_s eps_hat`` with both estimates guided, ``uncond + guidance (cond - uncond)``."""
        unet, b = self.model.unet, x_t.shape[0]
        uncond = self.uncond.to(cond).expand(b, *cond.shape[1:])
        with adapters_off(unet):
            out = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond]), return_dict=False)[0]
        alpha, sigma = (P.expand_as(c, x_t.float()) for c in self.schedule.coefficients(t, x_t.device))
        (x0_u, eps_u), (x0_c, eps_c) = (P.to_x0_eps(o.float(), x_t.float(), alpha, sigma, self.prediction_type)
                                        for o in out.chunk(2))  # fmt: skip
        w = P.expand_as(guidance.to(x_t.device, torch.float32), x0_u)
        x0, eps = x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u)
        alpha_s, sigma_s = (P.expand_as(c, x0) for c in self.schedule.coefficients(s, x_t.device))
        return alpha_s * x0 + sigma_s * eps

    def draws(self, config: Any, micro_step: int, shape: tuple[int, ...], rank: int, world_size: int) -> dict:
        """Everything random in a micro-batch of ``shape`` ``(B, C, h, w)`` per process, drawn for the global batch
        and cut to this process's slice: ``noise``, solver ``index`` ``(B,)``, ``latent_noise``, ``guidance``."""
        b = shape[0]
        part = slice(rank * b, (rank + 1) * b)
        noise, index, _, latent_noise = draw_step_noise(config.seed, micro_step, (b * world_size, *shape[1:]),
                                                        self.num_ddim_timesteps, latent=True, part=part)  # fmt: skip
        g = torch.Generator().manual_seed(mix_seed(config.seed, "guidance", micro_step))
        guidance = self.w_min + (self.w_max - self.w_min) * torch.rand(b * world_size, generator=g, dtype=torch.float64)
        return {"noise": noise, "index": index, "latent_noise": latent_noise, "guidance": guidance[part].float()}

    def loss(self, model: Any, batch: dict[str, Any], micro_step: int, accelerator: Any, config: Any) -> torch.Tensor:
        """The consistency-distillation loss of this process's part of micro-batch ``micro_step`` (the Trainer's
        hook: it calls this instead of its denoising loss). ``model``: the (possibly DDP-wrapped) student."""
        from .trainer import _model_output

        device = accelerator.device
        b = len(next(iter(batch.values())))
        d = self.draws(config, micro_step, (b, *self.sample_shape(batch)), accelerator.process_index,
                       accelerator.num_processes)  # fmt: skip
        x0, kwargs = self.inputs(batch, torch.zeros(b, dtype=torch.bool), d["latent_noise"], device)
        cond = kwargs["encoder_hidden_states"]
        t = self.grid[d["index"]].to(device)
        s = (t - self.skip).clamp(min=0)
        x_t = self.schedule.add_noise(x0, d["noise"].to(device), t)
        if config.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), accelerator.autocast():  # teacher and target first: the adapters' switch stays out
            x_s = self.teacher_step(x_t, t, s, cond, d["guidance"])  # of the graph
            target = self.consistency(self.model.unet(x_s.to(x_t.dtype), s, cond, return_dict=False)[0], x_s, s)
        with accelerator.autocast():
            out = _model_output(model(x_t, t, encoder_hidden_states=cond))
        return pseudo_huber(self.consistency(out, x_t, t), target, self.huber_c)

    # ---- what it hands out ------------------------------------------------------------------------------------
    def lcm_scheduler(self) -> Any:
        """The :class:`LCMScheduler` matching the distillation (its grid, timestep scaling and prediction type)."""
        from ..schedulers.lcm import LCMScheduler

        return LCMScheduler.from_config(
            self.base.scheduler.config, original_inference_steps=self.num_ddim_timesteps,
            timestep_scaling=self.timestep_scaling, prediction_type=self.prediction_type,
        )  # fmt: skip

    def pipeline(self, model: TextConditionedUNet, noise_scheduler: Any) -> Any:
        """The base pipeline with the student UNet and the :meth:`lcm_scheduler` (sample with ``guidance_scale``
        1 and 2-8 steps)."""
        pipe = super().pipeline(model, noise_scheduler)
        pipe.scheduler = self.lcm_scheduler()
        return pipe

    def adapter_metadata(self) -> dict[str, Any]:
        """The adapter's config for the file header (rank, alpha, modules), read by both loaders."""
        return {"r": self.lora_rank, "lora_alpha": self.lora_alpha or self.lora_rank,
                "target_modules": list(self.unet_lora_targets)}  # fmt: skip

    def save(self, pipe: Any, path: str | os.PathLike, step: int, config: Any) -> str:
        """``pytorch_lora_weights.safetensors`` (``unet.``-prefixed, for ``load_lora_weights``),
        ``scheduler_config.json`` (the matching LCMScheduler: ``LCMScheduler.from_pretrained(path)``) and the
        model card ``README.md``."""
        from peft.utils import get_peft_model_state_dict

        from .model_card import write_model_card

        path = os.fspath(path)
        # peft's key layout (``unet.<module>.lora_A.weight``), as Diffusers' LCM-LoRA script writes it: with
        # convolutions among the targets, Diffusers' mixed layout (``lora.down`` for attention only) would lose
        # the attention adapters in Diffusers' loader, which picks one layout from the first key
        layers = get_peft_model_state_dict(pipe.unet)
        type(pipe).save_lora_weights(path, unet_lora_layers=layers, unet_lora_adapter_metadata=self.adapter_metadata(),
                                     safe_serialization=True)  # fmt: skip
        self.lcm_scheduler().save_config(path)
        grid = os.path.join(config.output_dir, "samples.png")
        if os.path.isfile(grid) and not os.path.exists(os.path.join(path, "samples.png")):
            shutil.copyfile(grid, os.path.join(path, "samples.png"))
        write_model_card(path, self, step, config)
        return path

    def model_card(self, step: int, config: Any, grid: str | None = None) -> str:
        """The card's Markdown (what :func:`~.model_card.write_model_card` writes for this task)."""
        settings = {
            "method": "latent consistency distillation into LoRA (LCM-LoRA)", "steps": step,
            "LoRA": f"rank {self.lora_rank}, alpha {self.lora_alpha or self.lora_rank}, "
                    f"on {', '.join(self.unet_lora_targets)}",
            "batch size per process": config.batch_size, "learning rate": config.learning_rate,
            "teacher guidance scale": f"U[{self.w_min:g}, {self.w_max:g}]",
            "DDIM solver": f"{self.num_ddim_timesteps} timesteps (skip {self.skip})",
            "loss": f"pseudo-Huber, c = {self.huber_c:g}", "timestep scaling": self.timestep_scaling,
            "resolution": self.resolution, "seed": config.seed,
        }  # fmt: skip
        base = self.base_name
        lines = ["---", f"base_model: {base}", "library_name: diffusers", "tags:",
                 *[f"- {t}" for t in ("stable-diffusion", "text-to-image", "lcm", "lora", "torchdiffusion")], "---",
                 "", f"# LCM-LoRA for {base}", "",
                 f"Distilled with `torchdiffusion distill-lcm`: the UNet of `{base}` with these adapters samples in "
                 "2-8 steps with `LCMScheduler` and `guidance_scale=1` (the teacher's guidance is baked in).", "",
                 "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in settings.items()], ""]  # fmt: skip
        if config.validation_prompts:
            lines += [f"Validation prompts ({config.sample_inference_steps} LCM steps, guidance "
                      f"{config.sample_guidance_scale:g}; one row each):", "",
                      *[f"- {p}" for p in config.validation_prompts], "",
                      f"![validation grid]({grid})" if grid else "(no validation grid was drawn)", ""]  # fmt: skip
        lines += ["## Use", "", "```python", "from torchdiffusion import LCMScheduler, StableDiffusionPipeline", "",
                  f"pipe = StableDiffusionPipeline.from_pretrained({base!r})",
                  'pipe.scheduler = LCMScheduler.from_pretrained("path/to/this/folder")',
                  'pipe.load_lora_weights("path/to/this/folder")',
                  'image = pipe("a prompt", num_inference_steps=4, guidance_scale=1.0).images[0]', "```", "",
                  "Diffusers loads the same file: `pipe.load_lora_weights(folder)` with "
                  "`pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)`.", ""]  # fmt: skip
        return "\n".join(lines)
