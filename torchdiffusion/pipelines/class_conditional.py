"""ClassConditionalPipeline: DDPM-style generation of chosen classes with a class-conditional UNet2DModel, with
classifier-free guidance (Ho & Salimans 2022) when the model was trained with label dropout.

The pipeline folder is a Diffusers-style folder (``model_index.json``, ``unet/``, ``scheduler/``); two extra
keys in ``model_index.json`` say which class index means "no class" (``null_class_label``, used for the
unconditional half of guidance) and, optionally, the class names (``id2label``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.guidance import classifier_free_guidance
from ..utils.images import check_output_type, postprocess
from ..utils.torch_utils import GeneratorArg, check_generator, randn_tensor
from .denoise import check_finite_number, check_positive_int, denoise, fresh_scheduler, set_timesteps
from .pipeline import DiffusionPipeline, ImagePipelineOutput
from .speed_options import check_speed_options, feature_cache_for, last_guided_step, unet_cache_kwargs


class ClassConditionalPipeline(DiffusionPipeline):
    """``unet``: a :class:`UNet2DModel` with a class embedding (``num_class_embeds``); ``scheduler``: any scheduler.

    ``null_class_label``: the class index trained as "no label" (label dropout), needed for ``guidance_scale`` != 1;
    ``id2label``: class names by index (``{"0": "cat", ...}``), so ``class_labels`` may be given as names.
    """

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        null_class_label: int | None = None,
        id2label: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        num = unet.config.get("num_class_embeds")
        if null_class_label is not None:
            if isinstance(null_class_label, bool) or not isinstance(null_class_label, int) or null_class_label < 0:
                raise ValueError(f"null_class_label must be an int >= 0 or None, got {null_class_label!r}")
            if num is not None and null_class_label >= num:
                raise ValueError(f"null_class_label={null_class_label} must be < the unet's num_class_embeds={num}")
        if id2label is not None and not isinstance(id2label, dict):
            raise TypeError(f"id2label must be a dict {{'0': 'name', ...}} or None, got {type(id2label).__name__}")
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(
            null_class_label=null_class_label,
            id2label={str(k): str(v) for k, v in id2label.items()} if id2label else None,
        )

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> index (from ``id2label``)."""
        names = self.config.get("id2label") or {}
        return {name: int(i) for i, name in names.items()}

    @property
    def num_classes(self) -> int | None:
        """Number of real classes (the embedding table less the null class)."""
        num = self.unet.config.get("num_class_embeds")
        if num is None:
            return None
        return num - 1 if self.config.get("null_class_label") is not None else num

    def get_label_ids(self, labels: str | list[str]) -> list[int]:
        """Class names -> indices (``ValueError`` naming ``class_labels`` for an unknown name)."""
        names = [labels] if isinstance(labels, str) else list(labels)
        table = self.labels
        unknown = [n for n in names if n not in table]
        if unknown:
            raise ValueError(f"class_labels {unknown} are not known class names; known: {sorted(table)}")
        return [table[n] for n in names]

    def _class_tensor(self, class_labels: Any) -> torch.Tensor:
        if isinstance(class_labels, torch.Tensor):
            labels = class_labels.flatten().tolist()
        elif isinstance(class_labels, (int, str)) and not isinstance(class_labels, bool):
            labels = [class_labels]
        elif isinstance(class_labels, (list, tuple)) and class_labels:
            labels = list(class_labels)
        else:
            raise TypeError(
                f"class_labels must be an int, a name, or a non-empty list / tensor of them; got {class_labels!r}"
            )
        labels = [self.get_label_ids(x)[0] if isinstance(x, str) else x for x in labels]
        n = self.num_classes
        for x in labels:
            if isinstance(x, bool) or not isinstance(x, int) or x < 0 or (n is not None and x >= n):
                raise ValueError(f"class_labels must hold class indices in [0, {n}), got {x!r}")
        return torch.tensor(labels, dtype=torch.long)

    def __call__(
        self,
        class_labels: Any,
        guidance_scale: float = 1.0,
        generator: GeneratorArg = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        cache_interval: int | None = None,
        cache_depth: int = 1,
        guidance_end: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        """Generate one image per entry of ``class_labels`` (ints, or names when ``id2label`` is known).

        ``guidance_scale`` > 1 follows the class harder (needs ``null_class_label``); 1 disables guidance.
        ``generator``: one ``torch.Generator`` or one per image. ``eta`` is passed to schedulers that take it
        (DDIM). Output as in :class:`DDPMPipeline`. Speed options (off by default): ``cache_interval`` /
        ``cache_depth`` (UNet feature caching, as in :class:`DDPMPipeline`) and ``guidance_end`` (guidance for
        steps 0 .. int(guidance_end * steps), the conditional branch alone after that).
        """
        labels = self._class_tensor(class_labels)
        batch_size = len(labels)
        guidance_scale = check_finite_number(guidance_scale, "guidance_scale", minimum=0.0)
        check_positive_int(num_inference_steps, "num_inference_steps")
        check_generator(generator, batch_size)
        check_output_type(output_type)
        check_speed_options(cache_interval, cache_depth, guidance_end, self.unet)
        null = self.config.get("null_class_label")
        guided = guidance_scale != 1.0
        if guided and null is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a model trained with label dropout (null_class_label is None); "
                "use guidance_scale=1.0"
            )
        unet, device = self.unet, self.device
        scheduler = fresh_scheduler(self.scheduler)
        set_timesteps(scheduler, num_inference_steps, device=device)
        size = unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, unet.config.in_channels, height, width)
        x = randn_tensor(shape, generator, device=device, dtype=unet.dtype) * scheduler.init_noise_sigma
        labels = labels.to(device)
        model_labels = torch.cat([torch.full_like(labels, null), labels]) if guided else labels
        cache = feature_cache_for(cache_interval, cache_depth)  # this call's own
        last_guided = last_guided_step(len(scheduler.timesteps), guidance_end)
        step = iter(range(len(scheduler.timesteps)))

        def predict(x_in: torch.Tensor, t: torch.Tensor, state: dict) -> torch.Tensor:
            if not guided or next(step) > last_guided:
                if cache is not None:
                    cache.keep_last_rows(batch_size)  # the conditional half once guidance stopped
                return unet(x_in, t, class_labels=labels, **unet_cache_kwargs(cache)).sample
            out = unet(torch.cat([x_in, x_in]), t, class_labels=model_labels, **unet_cache_kwargs(cache)).sample
            uncond, cond = out.chunk(2)
            return classifier_free_guidance(uncond, cond, guidance_scale)

        with torch.inference_mode():
            x = denoise(self, scheduler, x, predict, generator=generator, step_options={"eta": eta})
        images = postprocess(x.float(), output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
