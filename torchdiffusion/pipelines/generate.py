"""Images for a grid from a trained pixel-space pipeline (:class:`DDPMPipeline` or
:class:`ClassConditionalPipeline`): one seeded generator per image, class labels that cycle through the classes
(or one chosen class), classifier-free guidance where the model was trained for it. ``torchdiffusion generate``
and the Trainer's sample grids both draw their images here, so the two agree image for image. Also the
text-to-image draw of ``generate`` and the LCM-LoRA its ``--fast`` picks (:func:`lcm_lora_for`)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from ..schedulers.samplers import DEFAULT_SAMPLER, SAMPLERS, check_sampler, sampling_scheduler
from .class_conditional import ClassConditionalPipeline


def generate_images(
    pipe: Any,
    num_images: int,
    num_inference_steps: int,
    *,
    sampler: str = DEFAULT_SAMPLER,
    seed: int = 0,
    class_label: str | int | None = None,
    guidance_scale: float = 1.0,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, int | None]:
    """Sample ``num_images`` images with the named ``sampler`` (a key of
    :data:`~torchdiffusion.schedulers.samplers.SAMPLERS`; it replaces ``pipe.scheduler``).

    Image ``i`` is drawn with a generator seeded ``seed + i``. A class-conditional pipeline draws class
    ``i % num_classes`` (default: the pipeline's ``num_classes``) for image ``i``, or ``class_label`` (an index or
    a name) for all; ``guidance_scale`` applies when the model was trained with label dropout, else 1.
    Returns the images ``(num_images, C, H, W)`` in [-1, 1] and the grid's column count (one column per class
    when the classes cycle evenly, else None).
    """
    pipe.scheduler = sampling_scheduler(sampler, pipe.scheduler.config)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_images)]
    options: dict[str, Any] = {"num_inference_steps": num_inference_steps, "generator": generators, "output_type": "pt"}
    cols = None
    if isinstance(pipe, ClassConditionalPipeline):
        if class_label is None:
            n = num_classes or pipe.num_classes or 1
            labels: list = [i % n for i in range(num_images)]
            cols = n if num_images % n == 0 else None
        else:
            label = int(class_label) if str(class_label).isdigit() else str(class_label)
            labels = [label] * num_images
        guidance = guidance_scale if pipe.config.get("null_class_label") is not None else 1.0
        images = pipe(labels, guidance_scale=guidance, **options).images
    else:
        if class_label is not None:
            raise ValueError(f"class_label={class_label!r}: {type(pipe).__name__} is not class-conditional")
        images = pipe(batch_size=num_images, **options).images
    return images * 2 - 1, cols


def generate_text_images(
    pipe: Any,
    prompt: str,
    num_images: int,
    num_inference_steps: int,
    *,
    sampler: str | None = None,
    seed: int = 0,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    lora_scale: float | None = None,
    speed_options: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, int | None]:
    """``num_images`` images of ``prompt`` from a text-to-image pipeline (image ``i`` seeded ``seed + i``), with
    the named ``sampler`` (None: the pipeline's own scheduler; a name swaps it with ``from_config``, as for any
    latent model), LoRA layers scaled by ``lora_scale`` for this call and ``speed_options`` (``cache_interval``,
    ``cache_depth``, ``guidance_end``) passed to the call. Returns ``(N, 3, H, W)`` in [-1, 1] and None (the grid's
    column count: automatic)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string for a text-to-image pipeline, got {prompt!r}")
    if sampler is not None:
        import torchdiffusion

        class_name, options = SAMPLERS[check_sampler(sampler)]
        pipe.scheduler = getattr(torchdiffusion, class_name).from_config(pipe.scheduler.config, **options)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_images)]
    extra = {"cross_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}
    extra.update(speed_options or {})
    images = pipe([prompt] * num_images, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                  negative_prompt=negative_prompt, generator=generators, output_type="pt", **extra).images
    return images * 2 - 1, None  # fmt: skip


def is_lcm_lora(path: str) -> bool:
    """Whether ``path`` is a LoRA folder with an ``LCMScheduler`` config beside it (what ``distill-lcm`` writes)."""
    from ..utils.json_files import read_json

    config = os.path.join(path, "scheduler_config.json")
    return os.path.isfile(config) and read_json(config).get("_class_name") == "LCMScheduler"


def lcm_lora_for(pipeline: str, lora: str | None, scheduler: str | None = None) -> str | None:
    """The LCM-LoRA (file, folder or Hub id) ``generate --fast`` samples with: ``lora`` when it is one
    (:func:`is_lcm_lora`) or when ``scheduler`` is ``"lcm"`` (the user says so: Diffusers' Hub LCM-LoRAs carry no
    scheduler config); without ``lora``, the embedded model's shipped one when ``pipeline`` names or is the embedded
    model's folder (and peft, the LoRA extra, is installed); else None (the option preset). Another ``scheduler``:
    None."""
    if scheduler is not None:
        return lora if scheduler == "lcm" else None
    if lora is not None:
        return lora if is_lcm_lora(lora) else None
    from ..pretrained import EMBEDDED_MODEL, embedded_lcm_lora_path, resolve_embedded

    if importlib.util.find_spec("peft") is None:
        return None
    try:
        embedded = resolve_embedded(EMBEDDED_MODEL)
    except FileNotFoundError:
        return None
    same = pipeline == EMBEDDED_MODEL or (os.path.isdir(pipeline) and os.path.samefile(pipeline, embedded))
    return embedded_lcm_lora_path() if same else None


def use_lcm_lora(pipe: Any, pipeline: str, lora: str | None, scheduler: str | None = None) -> str | None:
    """``generate --fast``'s LCM step: when :func:`lcm_lora_for` finds an LCM-LoRA, put an ``LCMScheduler`` on
    ``pipe`` (the LoRA folder's config where it has one, else built from ``pipe``'s own scheduler config, as for
    Diffusers' Hub LCM-LoRAs) and return the LoRA to load; else None (nothing changed)."""
    lcm = lcm_lora_for(pipeline, lora, scheduler)
    if lcm is not None:
        from ..schedulers.lcm import LCMScheduler

        own = is_lcm_lora(lcm)
        pipe.scheduler = LCMScheduler.from_pretrained(lcm) if own else LCMScheduler.from_config(pipe.scheduler.config)
    return lcm


def generate_from_pretrained(
    pipeline: str,
    num_images: int | None = None,
    scheduler: str | None = None,
    steps: int | None = None,
    class_label: str | int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    prompt: str | None = None,
    lora: str | None = None,
    lora_scale: float | None = None,
    negative_prompt: str | None = None,
    fast: bool = False,
):
    """Images ``(N, C, H, W)`` in [-1, 1] from a pipeline folder, and the number of grid columns to show them in.
    A text-to-image pipeline draws ``prompt`` (``num_images`` default 1, ``guidance_scale`` 7.5, its own scheduler
    unless ``scheduler`` names one), with the LoRA file or folder ``lora`` loaded and scaled by ``lora_scale``;
    ``fast``: with an LCM-LoRA (``lora`` a folder ``distill-lcm`` wrote or any ``lora`` with ``scheduler="lcm"``,
    or on the embedded model without ``lora`` its shipped one) 4 LCM steps at guidance 1; elsewhere
    :data:`~torchdiffusion.pipelines.speed_options.FAST_PRESET` (given ``steps`` and
    ``guidance_scale`` win). ``steps`` defaults to 25. What ``torchdiffusion generate`` runs."""
    from .pipeline import DiffusionPipeline
    from .speed_options import FAST_PRESET

    if scheduler is not None:
        check_sampler(scheduler)  # before the (slow) pipeline load
    if num_images is not None and (isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1):
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    pipe = DiffusionPipeline.from_pretrained(pipeline)
    pipe.set_progress_bar_config(desc="sampling", leave=False)
    if getattr(pipe, "text_encoder", None) is not None:
        if prompt is None:
            raise ValueError(f"prompt: {pipeline!r} is a text-to-image pipeline; give a prompt after the model")
        lcm = use_lcm_lora(pipe, pipeline, lora, scheduler) if fast else None
        if lcm is not None:  # 4 LCM steps, no guidance
            scheduler = None
            steps = 4 if steps is None else steps
            guidance_scale = 1.0 if guidance_scale is None else guidance_scale
        if lcm is not None or lora is not None:
            pipe.load_lora_weights(lcm or lora)
        fast_options = fast and lcm is None
        preset = {k: v for k, v in FAST_PRESET.items() if k != "num_inference_steps"} if fast_options else None
        if steps is None:
            steps = FAST_PRESET["num_inference_steps"] if fast_options else 25
        return generate_text_images(
            pipe, prompt, num_images or 1, steps, sampler=scheduler, seed=seed,
            guidance_scale=7.5 if guidance_scale is None else guidance_scale, negative_prompt=negative_prompt,
            lora_scale=lora_scale, speed_options=preset,
        )  # fmt: skip
    given = [n for n, v in (("prompt", prompt), ("lora", lora), ("lora_scale", lora_scale),
                            ("negative_prompt", negative_prompt), ("fast", fast or None)) if v is not None]  # fmt: skip
    if given:
        raise ValueError(f"{', '.join(given)}: {type(pipe).__name__} is not a text-to-image pipeline")
    return generate_images(
        pipe, num_images or 16, 25 if steps is None else steps, sampler=scheduler or DEFAULT_SAMPLER, seed=seed,
        class_label=class_label, guidance_scale=2.0 if guidance_scale is None else guidance_scale,
    )  # fmt: skip
