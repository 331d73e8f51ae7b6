"""Stable Diffusion: text-to-image, image-to-image and inpainting pipelines, their shared steps and the safety
checker (the layout of ``diffusers.pipelines.stable_diffusion``)."""

from .image_to_image import StableDiffusionImg2ImgPipeline
from .inpaint import StableDiffusionInpaintPipeline
from .latent_images import StableDiffusionPipelineOutput
from .safety_checker import StableDiffusionSafetyChecker
from .text_to_image import StableDiffusionPipeline

__all__ = [
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionPipelineOutput",
    "StableDiffusionSafetyChecker",
]
