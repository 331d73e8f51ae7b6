"""DDPMPipeline: unconditional image generation with a UNet2DModel and a scheduler (Ho et al. 2020)."""

from __future__ import annotations

from typing import Any

import torch

from ..utils.images import check_output_type, postprocess
from ..utils.torch_utils import GeneratorArg, check_generator, randn_tensor
from .denoise import check_positive_int, denoise, fresh_scheduler, set_timesteps
from .pipeline import DiffusionPipeline, ImagePipelineOutput
from .speed_options import check_speed_options, feature_cache_for, unet_cache_kwargs


class DDPMPipeline(DiffusionPipeline):
    """``unet`` predicts the noise (or x0 / v, as the scheduler's ``prediction_type`` says) of a noisy image;
    ``scheduler`` turns predictions into the reverse process."""

    def __init__(self, unet: Any, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def _image_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return batch_size, self.unet.config.in_channels, height, width

    def _check_call(self, batch_size: int, generator: GeneratorArg, num_inference_steps: int, output_type: str):
        check_positive_int(batch_size, "batch_size")
        check_positive_int(num_inference_steps, "num_inference_steps")
        check_generator(generator, batch_size)
        check_output_type(output_type)

    def _run(
        self, batch_size, generator, num_inference_steps, output_type, return_dict, cache=(None, 1), **step_options
    ):
        self._check_call(batch_size, generator, num_inference_steps, output_type)
        check_speed_options(*cache, unet=self.unet)
        cache_kwargs = unet_cache_kwargs(feature_cache_for(*cache))  # this call's own feature cache
        scheduler = fresh_scheduler(self.scheduler)
        set_timesteps(scheduler, num_inference_steps, device=self.device)
        unet = self.unet
        image = randn_tensor(self._image_shape(batch_size), generator, device=self.device, dtype=unet.dtype)
        image = image * scheduler.init_noise_sigma

        def predict(x: torch.Tensor, t: torch.Tensor, state: dict) -> torch.Tensor:
            return unet(x, t, **cache_kwargs).sample

        with torch.inference_mode():
            image = denoise(self, scheduler, image, predict, generator=generator, step_options=step_options)
        images = postprocess(image.float(), output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def __call__(
        self,
        batch_size: int = 1,
        generator: GeneratorArg = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
        return_dict: bool = True,
        cache_interval: int | None = None,
        cache_depth: int = 1,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``batch_size`` images.

        ``generator``: one ``torch.Generator`` or a list of ``batch_size`` (image i then depends only on
        ``generator[i]``: the same seed gives the same image alone or in a batch). ``output_type``: "pil",
        "np" (batch, height, width, channels) or "pt" (batch, channels, height, width), values in [0, 1].
        ``cache_interval=N`` (default None: off): the whole UNet runs every N-th step, in between only its
        ``cache_depth`` shallowest levels on the deep features of the last full step (UNet feature caching).
        """
        cache = (cache_interval, cache_depth)
        return self._run(batch_size, generator, num_inference_steps, output_type, return_dict, cache)
