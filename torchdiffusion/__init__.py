"""torchdiffusion: diffusion models on PyTorch, speaking the Diffusers dialect.

Public names are imported lazily (PEP 562) so ``import torchdiffusion`` stays cheap: nothing heavy
(transformers, accelerate, the model code) is imported until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_LAZY: dict[str, str] = {
    # configuration and base classes
    "ConfigMixin": "configuration",
    "FrozenDict": "configuration",
    "register_to_config": "configuration",
    "ModelMixin": "models.modeling",
    "BaseOutput": "utils.outputs",
    "make_image_grid": "utils.images",
    "VaeImageProcessor": "image_processor",
    "randn_tensor": "utils.torch_utils",
    # models
    "AutoencoderKL": "models.autoencoder_kl",
    "AutoencoderKLOutput": "models.autoencoder_kl",
    "AutoencoderTiny": "models.autoencoder_tiny",
    "AutoencoderTinyOutput": "models.autoencoder_tiny",
    "DecoderOutput": "models.vae",
    "UNet2DConditionModel": "models.unet_2d_condition",
    "UNet2DConditionOutput": "models.unet_2d_condition",
    "UNet2DModel": "models.unet_2d",
    "UNet2DOutput": "models.unet_2d",
    # schedulers
    "SchedulerMixin": "schedulers.scheduling_utils",
    "SchedulerOutput": "schedulers.scheduling_utils",
    "KarrasDiffusionSchedulers": "schedulers.scheduling_utils",
    "DDPMScheduler": "schedulers.ddpm",
    "DDPMSchedulerOutput": "schedulers.ddpm",
    "DDIMScheduler": "schedulers.ddim",
    "DDIMSchedulerOutput": "schedulers.ddim",
    "DEISMultistepScheduler": "schedulers.deis",
    "DPMSolverMultistepScheduler": "schedulers.dpmsolver_multistep",
    "DPMSolverSinglestepScheduler": "schedulers.dpmsolver_singlestep",
    "EDMDPMSolverMultistepScheduler": "schedulers.edm_dpmsolver",
    "EDMEulerScheduler": "schedulers.edm_euler",
    "EulerAncestralDiscreteScheduler": "schedulers.euler_ancestral",
    "EulerDiscreteScheduler": "schedulers.euler",
    "FlowMatchEulerDiscreteScheduler": "schedulers.flow_match_euler",
    "HeunDiscreteScheduler": "schedulers.heun",
    "KDPM2AncestralDiscreteScheduler": "schedulers.kdpm2_ancestral",
    "KDPM2DiscreteScheduler": "schedulers.kdpm2",
    "LCMScheduler": "schedulers.lcm",
    "LMSDiscreteScheduler": "schedulers.lms",
    "PNDMScheduler": "schedulers.pndm",
    "TCDScheduler": "schedulers.tcd",
    "UniPCMultistepScheduler": "schedulers.unipc",
    # pipelines
    "DiffusionPipeline": "pipelines.pipeline",
    "ImagePipelineOutput": "pipelines.pipeline",
    "DDPMPipeline": "pipelines.ddpm",
    "DDIMPipeline": "pipelines.ddim",
    "ClassConditionalPipeline": "pipelines.class_conditional",
    "StableDiffusionImg2ImgPipeline": "pipelines.stable_diffusion.image_to_image",
    "StableDiffusionInpaintPipeline": "pipelines.stable_diffusion.inpaint",
    "StableDiffusionPipeline": "pipelines.stable_diffusion.text_to_image",
    "StableDiffusionPipelineOutput": "pipelines.stable_diffusion.latent_images",
    "StableDiffusionSafetyChecker": "pipelines.stable_diffusion.safety_checker",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'torchdiffusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .configuration import ConfigMixin, FrozenDict, register_to_config  # noqa: F401
    from .models.modeling import ModelMixin  # noqa: F401
    from .models.unet_2d import UNet2DModel, UNet2DOutput  # noqa: F401
    from .pipelines.ddim import DDIMPipeline  # noqa: F401
    from .pipelines.ddpm import DDPMPipeline  # noqa: F401
    from .pipelines.pipeline import DiffusionPipeline, ImagePipelineOutput  # noqa: F401
    from .schedulers.ddim import DDIMScheduler, DDIMSchedulerOutput  # noqa: F401
    from .schedulers.ddpm import DDPMScheduler, DDPMSchedulerOutput  # noqa: F401
    from .schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput  # noqa: F401
    from .utils.images import make_image_grid  # noqa: F401
    from .utils.outputs import BaseOutput  # noqa: F401
