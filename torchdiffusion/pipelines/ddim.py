"""DDIMPipeline: unconditional generation with the DDIM sampler (Song et al. 2021); ``eta`` blends in noise."""

from __future__ import annotations

from typing import Any

from ..utils.torch_utils import GeneratorArg
from .ddpm import DDPMPipeline
from .denoise import check_finite_number
from .pipeline import ImagePipelineOutput


class DDIMPipeline(DDPMPipeline):
    """Like :class:`DDPMPipeline`, but the scheduler is made a DDIMScheduler (from its config) when built."""

    def __init__(self, unet: Any, scheduler: Any) -> None:
        from ..schedulers.ddim import DDIMScheduler

        if not isinstance(scheduler, DDIMScheduler):
            scheduler = DDIMScheduler.from_config(scheduler.config)
        super().__init__(unet=unet, scheduler=scheduler)

    def __call__(
        self,
        batch_size: int = 1,
        generator: GeneratorArg = None,
        eta: float = 0.0,
        num_inference_steps: int = 50,
        use_clipped_model_output: bool | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cache_interval: int | None = None,
        cache_depth: int = 1,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``batch_size`` images in ``num_inference_steps`` DDIM steps (``eta=0``: deterministic).
        ``cache_interval`` / ``cache_depth``: UNet feature caching, as in :meth:`DDPMPipeline.__call__`."""
        check_finite_number(eta, "eta", minimum=0.0)
        return self._run(
            batch_size,
            generator,
            num_inference_steps,
            output_type,
            return_dict,
            (cache_interval, cache_depth),
            eta=eta,
            use_clipped_model_output=use_clipped_model_output,
        )
