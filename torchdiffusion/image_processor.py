"""VaeImageProcessor: images (PIL, numpy, tensors) <-> the tensors a VAE reads and writes.

The same class, arguments, config and methods as Diffusers' ``diffusers.image_processor.VaeImageProcessor``, built
on :mod:`torchdiffusion.utils.images` (conversions, input reading) and :mod:`torchdiffusion.utils.image_regions`
(crop boxes, fill/cover resizes, overlays). The Stable Diffusion pipelines carry one as ``pipe.image_processor``
(and the inpainting pipeline a mask processor as ``pipe.mask_processor``).

Tensors are (batch, channels, height, width); numpy arrays (batch, height, width, channels); pixel values are in
[0, 1], or [-1, 1] once normalized.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .configuration import ConfigMixin, register_to_config
from .utils import image_regions as _regions
from .utils import images as _images

PipelineImageInput = Any  # a PIL image, numpy array or tensor, or a list of them (Diffusers' type alias)

RESAMPLE_NAMES = ("nearest", "linear", "bilinear", "bicubic", "lanczos")
RESIZE_MODES = ("default", "fill", "crop")


def _pil_resample(name: str) -> Any:
    from PIL import Image

    return {
        "nearest": Image.Resampling.NEAREST,
        "linear": Image.Resampling.BILINEAR,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }[name]


class VaeImageProcessor(ConfigMixin):
    """Pre- and post-processing of VAE images.

    ``do_resize``: round sizes down to multiples of ``vae_scale_factor`` (or resize to the ``height``/``width``
    given to :meth:`preprocess`); ``vae_latent_channels``: tensors with this many channels are latents and pass
    through :meth:`preprocess` untouched; ``resample``: PIL filter ("lanczos", "bicubic", "bilinear", "linear",
    "nearest"); ``reducing_gap``: PIL's resize speed-up; ``do_normalize``: map [0, 1] to [-1, 1] (and back in
    :meth:`postprocess`); ``do_binarize``: threshold at 0.5 to 0/1 (masks); ``do_convert_rgb`` /
    ``do_convert_grayscale``: convert PIL images to RGB / "L" (not both).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        do_resize: bool = True,
        vae_scale_factor: int = 8,
        vae_latent_channels: int = 4,
        resample: str = "lanczos",
        reducing_gap: int | None = None,
        do_normalize: bool = True,
        do_binarize: bool = False,
        do_convert_rgb: bool = False,
        do_convert_grayscale: bool = False,
    ) -> None:
        super().__init__()
        if do_convert_rgb and do_convert_grayscale:
            raise ValueError("do_convert_rgb and do_convert_grayscale cannot both be True; pick one")
        if resample not in RESAMPLE_NAMES:
            raise ValueError(f"resample must be one of {list(RESAMPLE_NAMES)}, got {resample!r}")
        if isinstance(vae_scale_factor, bool) or not isinstance(vae_scale_factor, int) or vae_scale_factor < 1:
            raise ValueError(f"vae_scale_factor must be a positive int, got {vae_scale_factor!r}")

    # ---- conversions (static, as in Diffusers) -------------------------------------------------------------
    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> list:
        """(batch, height, width, channels) or (height, width, channels) array in [0, 1] -> list of PIL images
        ("L" for one channel)."""
        return _images.numpy_to_pil(images)

    @staticmethod
    def pil_to_numpy(images: Any) -> np.ndarray:
        """PIL image(s) -> float32 array (batch, height, width, channels) in [0, 1] ((batch, height, width) for
        single-channel images)."""
        return _images.pil_to_numpy(images)

    @staticmethod
    def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
        """(batch, height, width[, channels]) array -> tensor (batch, channels, height, width)."""
        return _images.numpy_to_pt(images)

    @staticmethod
    def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
        """(batch, channels, height, width) tensor -> float32 array (batch, height, width, channels) on the CPU."""
        return _images.pt_to_numpy(images)

    @staticmethod
    def normalize(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """[0, 1] -> [-1, 1]."""
        return 2.0 * images - 1.0

    @staticmethod
    def denormalize(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """[-1, 1] -> [0, 1], clamped."""
        out = images * 0.5 + 0.5
        return np.clip(out, 0, 1) if isinstance(out, np.ndarray) else out.clamp(0, 1)

    @staticmethod
    def convert_to_rgb(image: Any) -> Any:
        """A PIL image in RGB mode."""
        return image.convert("RGB")

    @staticmethod
    def convert_to_grayscale(image: Any) -> Any:
        """A PIL image in "L" (grayscale) mode."""
        return image.convert("L")

    @staticmethod
    def blur(image: Any, blur_factor: int = 4) -> Any:
        """A PIL image blurred with a Gaussian of radius ``blur_factor`` (soft mask edges)."""
        from PIL import ImageFilter

        return image.filter(ImageFilter.GaussianBlur(blur_factor))

    @staticmethod
    def get_crop_region(mask_image: Any, width: int, height: int, pad: int = 0) -> tuple[int, int, int, int]:
        """The box (x1, y1, x2, y2) around the mask's non-zero pixels, grown by ``pad`` and to the aspect ratio
        ``width / height`` (see :func:`~torchdiffusion.utils.image_regions.mask_crop_region`)."""
        return _regions.mask_crop_region(mask_image, width, height, pad)

    # ---- resizing --------------------------------------------------------------------------------------
    def _resize_and_fill(self, image: Any, width: int, height: int) -> Any:
        return _regions.resize_fill(image, width, height, _pil_resample(self.config.resample))

    def _resize_and_crop(self, image: Any, width: int, height: int) -> Any:
        return _regions.resize_cover(image, width, height, _pil_resample(self.config.resample))

    def resize(self, image: Any, height: int, width: int, resize_mode: str = "default") -> Any:
        """Resize to ``height`` x ``width``. PIL images use ``resample``; with ``resize_mode`` "fill" (fit inside,
        edges stretched into the bands) or "crop" (cover, excess cut) the aspect ratio is kept (PIL only). Arrays
        (batch, H, W, C) and tensors (batch, C, H, W) use nearest-neighbour interpolation."""
        from PIL import Image

        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {list(RESIZE_MODES)}, got {resize_mode!r}")
        if isinstance(image, Image.Image):
            if resize_mode == "fill":
                return self._resize_and_fill(image, width, height)
            if resize_mode == "crop":
                return self._resize_and_crop(image, width, height)
            resample = _pil_resample(self.config.resample)
            return image.resize((width, height), resample=resample, reducing_gap=self.config.reducing_gap)
        if resize_mode != "default":
            raise ValueError(f"resize_mode={resize_mode!r} needs a PIL image, got {type(image).__name__}")
        if isinstance(image, torch.Tensor):
            return F.interpolate(image, size=(height, width))
        if isinstance(image, np.ndarray):
            return self.pt_to_numpy(F.interpolate(self.numpy_to_pt(image), size=(height, width)))
        raise ValueError(f"image must be a PIL image, numpy array or tensor, got {type(image).__name__}")

    def binarize(self, image: torch.Tensor) -> torch.Tensor:
        """Values < 0.5 -> 0, the rest -> 1 (in place, as Diffusers)."""
        image[image < 0.5] = 0
        image[image >= 0.5] = 1
        return image

    def get_default_height_width(
        self, image: Any, height: int | None = None, width: int | None = None
    ) -> tuple[int, int]:
        """(height, width): the given ones, else the image's (PIL; array (batch, H, W[, C]); tensor
        (batch, C, H, W)), each rounded down to a multiple of ``vae_scale_factor``."""
        from PIL import Image

        if isinstance(image, Image.Image):
            size = (image.height, image.width)
        elif isinstance(image, torch.Tensor):
            size = (image.shape[2], image.shape[3])
        else:
            size = (image.shape[1], image.shape[2])
        h = size[0] if height is None else height
        w = size[1] if width is None else width
        f = self.config.vae_scale_factor
        return h - h % f, w - w % f

    # ---- the two directions ----------------------------------------------------------------------------
    def preprocess(
        self,
        image: PipelineImageInput,
        height: int | None = None,
        width: int | None = None,
        resize_mode: str = "default",
        crops_coords: tuple[int, int, int, int] | None = None,
    ) -> torch.Tensor:
        """Image(s) -> float tensor (batch, channels, height, width), in [-1, 1] with ``do_normalize``.

        ``image``: a PIL image, numpy array (H, W[, C]) / (batch, H, W[, C]) or tensor (C, H, W) /
        (batch, C, H, W) with values in [0, 1], or a list of one kind. Tensors with ``vae_latent_channels``
        channels are returned unchanged (latents). ``crops_coords`` (x1, y1, x2, y2) crops PIL images first;
        ``resize_mode`` as in :meth:`resize`. Tensors already in [-1, 1] are not normalized again (a warning).
        """
        grayscale = self.config.do_convert_grayscale
        items = _images.image_list(image, "image")
        kind = _images.image_kind(items, "image")
        if resize_mode not in RESIZE_MODES or (resize_mode != "default" and kind != "pil"):
            raise ValueError(f"resize_mode must be 'default' (or 'fill'/'crop' for PIL images), got {resize_mode!r}")
        if kind == "pil":
            if crops_coords is not None:
                items = [im.crop(crops_coords) for im in items]
            if self.config.do_resize:
                height, width = self.get_default_height_width(items[0], height, width)
                items = [self.resize(im, height, width, resize_mode) for im in items]
            if self.config.do_convert_rgb:
                items = [im.convert("RGB") for im in items]
            elif grayscale:
                items = [im.convert("L") for im in items]
            sizes = sorted({im.size for im in items})
            if len(sizes) > 1:
                raise ValueError(f"image: all images must have the same size, got {sizes}")
            x = self.numpy_to_pt(self.pil_to_numpy(items))
        else:
            if kind == "np":
                x = _images.stack_arrays(items, grayscale, "image")
            else:
                x = _images.stack_tensors(items, grayscale, "image")
                if x.shape[1] == self.config.vae_latent_channels:
                    return x
            height, width = self.get_default_height_width(x, height, width)
            if self.config.do_resize and (height, width) != tuple(x.shape[2:]):
                x = self.resize(x, height, width, resize_mode)
        if self.config.do_normalize:
            if x.min() < 0:
                warnings.warn(
                    "image has values below 0; taking it as already in [-1, 1] (pass images in [0, 1])",
                    FutureWarning,
                    stacklevel=2,
                )
            else:
                x = self.normalize(x)
        if self.config.do_binarize:
            x = self.binarize(x)
        return x

    def postprocess(
        self, image: torch.Tensor, output_type: str = "pil", do_denormalize: list[bool] | None = None
    ) -> Any:
        """Tensor (batch, channels, height, width) -> ``output_type``: "pt" (tensor), "np" (array (batch, height,
        width, channels)), "pil" (list of images) or "latent" (unchanged). ``do_denormalize``: one flag per image
        (default: ``do_normalize``) for mapping [-1, 1] back to [0, 1]."""
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"image must be a torch tensor (batch, channels, height, width), got {type(image)}")
        _images.check_output_type(output_type, ("latent", "pt", "np", "pil"))
        if output_type == "latent":
            return image
        if do_denormalize is None:
            image = self.denormalize(image) if self.config.do_normalize else image
        else:
            if len(do_denormalize) != image.shape[0]:
                raise ValueError(
                    f"do_denormalize has {len(do_denormalize)} flags for {image.shape[0]} images; give one per image"
                )
            image = torch.stack([self.denormalize(im) if d else im for im, d in zip(image, do_denormalize)])
        if output_type == "pt":
            return image
        arr = self.pt_to_numpy(image)
        return arr if output_type == "np" else self.numpy_to_pil(arr)

    def apply_overlay(
        self, mask: Any, init_image: Any, image: Any, crop_coords: tuple[int, int, int, int] | None = None
    ) -> Any:
        """The original ``init_image`` laid over the inpainted ``image`` where ``mask`` is black; with
        ``crop_coords`` the inpainted image is first scaled to cover that box of the original (PIL, RGB out)."""
        resample = _pil_resample(self.config.resample)
        return _regions.paste_inpainted(init_image, mask, image, crop_coords, resample)
