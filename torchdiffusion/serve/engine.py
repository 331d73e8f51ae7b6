"""The model side of ``torchdiffusion serve``: one pipeline loaded once, shared by every worker thread.

Our pipelines keep their per-call state per thread and copy the scheduler per call, so one object serves many
threads at once. A sampler other than the folder's own is a second pipeline object built from the same
components (no weights copied) with another scheduler; image-to-image and inpainting are built the same way from
a Stable Diffusion text-to-image folder.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODES = ("txt2img", "img2img", "inpaint")


class Stopped(Exception):
    """Raised from the step callback of a pipeline without a per-call interrupt flag, to end a cancelled job."""


@dataclass
class Generation:
    """One checked request: what to run. ``seeds`` holds one seed per image (``batch_size * n_iter``);
    ``init_images`` / ``mask`` are PIL images already at ``width`` x ``height``."""

    mode: str
    prompt: str
    negative_prompt: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    sampler_name: str
    grid: str
    scheduler_class: str
    scheduler_options: dict[str, Any]
    seeds: list[int]
    batch_size: int
    n_iter: int
    denoising_strength: float | None = None
    init_images: list[Any] = field(default_factory=list)
    mask: Any = None
    send_images: bool = True


class Engine:
    """A loaded pipeline and the variants (sampler x mode) built from its components on first use."""

    def __init__(self, pipe: Any, name: str) -> None:
        self.pipe, self.name = pipe, name
        self._variants: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self._sd = _is_stable_diffusion(pipe)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> Engine:
        """Load the pipeline folder ``path`` (onto ``device``: CUDA when available, else the CPU)."""
        import torch

        from torchdiffusion import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(os.fspath(path))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(pipe.to(device), os.path.basename(os.path.normpath(os.fspath(path))))

    @property
    def device(self) -> Any:
        """The torch device the pipeline runs on."""
        return self.pipe.device

    # ---- what the model offers -----------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    def default_size(self) -> tuple[int, int]:
        """(width, height) of the model's own resolution."""
        unet = getattr(self.pipe, "unet", None)
        size = getattr(getattr(unet, "config", None), "sample_size", None) or 64
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f = self.size_multiple if self._sd else 1
        return int(w) * f, int(h) * f

    @property
    def fixed_size(self) -> bool:
        """Whether the model makes images of its own size only (its pipeline takes no ``height``/``width``)."""
        return "height" not in inspect.signature(type(self.pipe).__call__).parameters

    def modes(self) -> tuple[str, ...]:
        if not self._sd:
            return ("txt2img",)
        latent = self.pipe.vae.config.latent_channels
        return MODES if self.pipe.unet.config.in_channels == latent else ("inpaint",)

    def check_sampler(self, class_name: str, options: dict[str, Any]) -> str | None:
        """Why the scheduler ``class_name`` with ``options`` cannot be used (a message), or None."""
        import torchdiffusion

        cls = getattr(torchdiffusion, class_name)
        accepted = inspect.signature(cls.__init__).parameters
        missing = [k for k in options if k not in accepted]
        return f"{class_name} has no option {missing[0]}" if missing else None

    # ---- running -----------------------------------------------------------------------------------------
    def pipeline(self, mode: str, class_name: str, options: dict[str, Any]) -> Any:
        """The pipeline for ``mode`` with scheduler ``class_name(**options)``, sharing this engine's components."""
        key = (mode, class_name, tuple(sorted(options.items())))
        with self._lock:
            pipe = self._variants.get(key)
            if pipe is None:
                import torchdiffusion

                scheduler = getattr(torchdiffusion, class_name).from_config(self.pipe.scheduler.config, **options)
                cls = type(self.pipe)
                if self._sd:
                    cls = {
                        "txt2img": torchdiffusion.StableDiffusionPipeline,
                        "img2img": torchdiffusion.StableDiffusionImg2ImgPipeline,
                        "inpaint": torchdiffusion.StableDiffusionInpaintPipeline,
                    }[mode]
                components = self.pipe.components
                accepted = inspect.signature(cls.__init__).parameters
                settings = {k: v for k, v in self.pipe.config.items()  # e.g. requires_safety_checker, id2label
                            if k in accepted and k not in components and not k.startswith("_")}  # fmt: skip
                if components.get("safety_checker", False) is None and "requires_safety_checker" in accepted:
                    settings["requires_safety_checker"] = False  # warned once, at load time
                pipe = self._variants[key] = cls(**{**components, "scheduler": scheduler}, **settings)
                if hasattr(pipe, "set_progress_bar_config"):
                    pipe.set_progress_bar_config(disable=True)
            return pipe

    def run(self, gen: Generation, on_step: Callable[[int, int, Any], bool]) -> tuple[list[Any], bool]:
        """Run ``gen`` (``n_iter`` calls of ``batch_size`` images); ``on_step(done, total, latents)`` after every
        denoising step (``latents``: a copy of the first image's (C, h, w) latents, for :meth:`preview`; None when
        the pipeline shows none) returns True to stop. Returns (PIL images, whether it stopped early)."""
        import torch

        pipe = self.pipeline(gen.mode, gen.scheduler_class, gen.scheduler_options)
        interruptible = isinstance(getattr(type(pipe), "_interrupt", None), property)
        accepted = inspect.signature(type(pipe).__call__).parameters
        images: list[Any] = []
        stopped = False
        done = per_call = 0  # steps of the finished calls; steps of one call (img2img runs fewer than gen.steps)
        for n in range(gen.n_iter):
            seeds = gen.seeds[n * gen.batch_size : (n + 1) * gen.batch_size]

            def callback(p: Any, i: int, t: Any, tensors: dict, base: int = done) -> dict:
                nonlocal stopped, per_call
                per_call = getattr(p, "num_timesteps", 0) or gen.steps  # read inside the call: this call's
                latents = tensors.get("latents")
                latents = latents[0].detach().clone() if isinstance(latents, torch.Tensor) else None
                if on_step(base + i + 1, per_call * gen.n_iter, latents):
                    stopped = True
                    if not interruptible:
                        raise Stopped
                    p._interrupt = True
                return {}

            kwargs: dict[str, Any] = dict(
                prompt=[gen.prompt] * len(seeds),
                negative_prompt=[gen.negative_prompt] * len(seeds),
                num_inference_steps=gen.steps,
                guidance_scale=gen.cfg_scale,
                height=gen.height,
                width=gen.width,
                generator=[torch.Generator().manual_seed(s) for s in seeds],
                callback_on_step_end=callback,
                output_type="pil",
            )
            if gen.mode != "txt2img":
                kwargs["image"] = [gen.init_images[(n * gen.batch_size + k) % len(gen.init_images)]
                                   for k in range(len(seeds))]  # fmt: skip
                kwargs["strength"] = gen.denoising_strength
            if gen.mode == "inpaint":
                kwargs["mask_image"] = gen.mask
            if not self._sd and "prompt" not in accepted:
                if "class_labels" in accepted:  # a class-conditional model: the prompt names the class
                    kwargs["class_labels"] = [int(gen.prompt) if gen.prompt.isdigit() else gen.prompt] * len(seeds)
                else:  # an unconditional one
                    kwargs["batch_size"] = len(seeds)
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
            try:
                out = pipe(**kwargs)
            except Stopped:
                break
            images.extend(_to_pil(out.images))
            done += per_call or gen.steps
            if stopped:
                break
        return images, stopped


# Latent channel -> RGB weights that approximate Stable Diffusion's VAE decoder for a cheap preview (a linear fit
# the community uses for live previews; the real decode runs once at the end).
_SD_PREVIEW_WEIGHTS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))


def preview(latents: Any) -> Any:
    """A small PIL preview of Stable Diffusion latents (4, h, w) (h x w pixels), or None for other latents."""
    import torch
    from PIL import Image

    if not isinstance(latents, torch.Tensor) or latents.ndim != 3 or latents.shape[0] != 4:
        return None
    weights = torch.tensor(_SD_PREVIEW_WEIGHTS, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents.float().cpu(), weights)
    rgb = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(rgb)


def png_base64(image: Any, infotext: str = "") -> str:
    """``image`` (PIL) as a base64 PNG carrying ``infotext`` in its "parameters" text chunk, as A1111 writes."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    if infotext:
        meta.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def infotext(gen: Generation, seed: int, model: str) -> str:
    """A1111's one-image description: prompt, negative prompt, then "Steps: ..., Sampler: ..., Seed: ..."."""
    parts = [f"Steps: {gen.steps}", f"Sampler: {gen.sampler_name}"]
    if gen.grid != "automatic":
        parts.append(f"Schedule type: {gen.grid}")
    parts += [f"CFG scale: {gen.cfg_scale:g}", f"Seed: {seed}", f"Size: {gen.width}x{gen.height}", f"Model: {model}"]
    if gen.denoising_strength is not None:
        parts.append(f"Denoising strength: {gen.denoising_strength:g}")
    from torchdiffusion import __version__

    parts.append(f"Version: torchdiffusion {__version__}")
    negative = f"\nNegative prompt: {gen.negative_prompt}" if gen.negative_prompt else ""
    return f"{gen.prompt}{negative}\n{', '.join(parts)}"


def info_json(gen: Generation, model: str, count: int, interrupted: bool) -> str:
    """The ``info`` string of a response for its first ``count`` images."""
    seeds = gen.seeds[:count]
    return json.dumps(
        {
            "prompt": gen.prompt,
            "all_prompts": [gen.prompt] * count,
            "negative_prompt": gen.negative_prompt,
            "all_negative_prompts": [gen.negative_prompt] * count,
            "seed": gen.seeds[0],
            "all_seeds": seeds,
            "subseed": -1,
            "all_subseeds": [-1] * count,
            "width": gen.width,
            "height": gen.height,
            "sampler_name": gen.sampler_name,
            "scheduler": gen.grid,
            "cfg_scale": gen.cfg_scale,
            "steps": gen.steps,
            "batch_size": gen.batch_size,
            "n_iter": gen.n_iter,
            "denoising_strength": gen.denoising_strength,
            "sd_model_name": model,
            "sd_model_hash": None,
            "infotexts": [infotext(gen, s, model) for s in seeds],
            "interrupted": interrupted,
        }
    )


def _to_pil(images: Any) -> list[Any]:
    """PIL images from a pipeline's output (a PIL list, or a (B, C, H, W) tensor / (B, H, W, C) array in [0, 1])."""
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(images, list) and all(isinstance(im, Image.Image) for im in images):
        return images
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    arr = (np.clip(np.asarray(images, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def _is_stable_diffusion(pipe: Any) -> bool:
    import torchdiffusion

    sd = (
        torchdiffusion.StableDiffusionPipeline,
        torchdiffusion.StableDiffusionImg2ImgPipeline,
        torchdiffusion.StableDiffusionInpaintPipeline,
    )
    return isinstance(pipe, sd)
