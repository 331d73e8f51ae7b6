"""The request and response bodies of ``torchdiffusion serve`` (AUTOMATIC1111's field names) and the limits every
request is checked against before any work starts. Torch-free.

Fields A1111 has and this server does not use (``restore_faces``, ``enable_hr``, ``styles``, ...) are accepted
and ignored, so existing clients keep working; the fields below are typed strictly (a string where a number
belongs is an error, not a guess).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..schedulers.samplers import resolve_a1111_sampler

MAX_SIDE = 8192
"""No image side above this many pixels, whatever ``max_pixels`` allows (a 100000 x 8 image is no image)."""


class FieldError(ValueError):
    """A request field breaks a rule; the app answers 422 with ``field`` and the message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. ``max_batch`` bounds ``batch_size * n_iter``, ``max_pixels`` bounds
    ``width * height``; ``max_body_bytes`` is checked while the body arrives."""

    max_steps: int = 100
    max_pixels: int = 1024 * 1024
    max_batch: int = 8
    max_prompt_chars: int = 4000
    max_body_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_pixels", "max_batch", "max_prompt_chars", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


class Txt2ImgRequest(BaseModel):
    """``POST /sdapi/v1/txt2img``. ``width``/``height`` default to the model's own size; ``seed`` -1 draws one
    (the seed used comes back in ``info``); image ``i`` of the request uses seed ``seed + i``."""

    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = Field(7.0, allow_inf_nan=False)
    width: int | None = None
    height: int | None = None
    sampler_name: str | None = Field(None, description="an A1111 sampler name, e.g. 'DPM++ 2M' or 'Euler a'")
    sampler_index: str | None = Field(None, description="A1111's older name of sampler_name")
    scheduler: str | None = Field(None, description="noise-level grid: automatic, karras, exponential, ...")
    seed: int = -1
    batch_size: int = 1
    n_iter: int = 1
    send_images: bool = True
    force_task_id: str | None = Field(None, max_length=64, description="an id to follow with /progress?id_task=")


class Img2ImgRequest(Txt2ImgRequest):
    """``POST /sdapi/v1/img2img``: ``init_images`` (base64 PNG/JPEG, data URLs accepted; image ``i`` uses
    ``init_images[i % len]``), ``denoising_strength`` in [0, 1], optional ``mask`` (white = repaint, or black
    with ``inpainting_mask_invert`` 1)."""

    init_images: list[str] = Field(..., min_length=1)
    denoising_strength: float = Field(0.75, allow_inf_nan=False)
    mask: str | None = None
    inpainting_mask_invert: int = 0


class ImagesResponse(BaseModel):
    images: list[str] = Field(description="base64 PNG images")
    parameters: dict[str, Any] = Field(description="the request as understood (images left out)")
    info: str = Field(description="a JSON string: the seeds used, the settings, A1111 infotexts")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    queue_position: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class ErrorResponse(BaseModel):
    error: str
    detail: str
    field: str | None = None


# ---- checks -----------------------------------------------------------------------------------------------------


def check_request(req: Txt2ImgRequest, limits: Limits, size_multiple: int) -> tuple[str, str, str, dict[str, Any]]:
    """Check ``req`` against ``limits`` (sizes must be multiples of ``size_multiple``); raise :class:`FieldError`
    naming the first bad field. Returns the resolved sampler (see :func:`resolve_a1111_sampler`)."""
    for field in ("prompt", "negative_prompt"):
        if len(getattr(req, field)) > limits.max_prompt_chars:
            raise FieldError(field, f"at most {limits.max_prompt_chars} characters, got {len(getattr(req, field))}")
    if not 1 <= req.steps <= limits.max_steps:
        raise FieldError("steps", f"must be in [1, {limits.max_steps}], got {req.steps}")
    if not 0.0 <= req.cfg_scale <= 100.0:
        raise FieldError("cfg_scale", f"must be in [0, 100], got {req.cfg_scale}")
    for field in ("width", "height"):
        value = getattr(req, field)
        if value is not None and not (size_multiple <= value <= MAX_SIDE and value % size_multiple == 0):
            allowed = f"a multiple of {size_multiple} in [{size_multiple}, {MAX_SIDE}]"
            raise FieldError(field, f"must be {allowed}, got {value}")
    if req.width is not None and req.height is not None and req.width * req.height > limits.max_pixels:
        raise FieldError("width", f"width x height = {req.width * req.height} pixels, above {limits.max_pixels}")
    if not -1 <= req.seed < 2**63:
        raise FieldError("seed", f"must be -1 (random) or in [0, 2**63), got {req.seed}")
    for field in ("batch_size", "n_iter"):
        if getattr(req, field) < 1:
            raise FieldError(field, f"must be >= 1, got {getattr(req, field)}")
    if req.batch_size * req.n_iter > limits.max_batch:
        raise FieldError("batch_size", f"batch_size x n_iter must be <= {limits.max_batch}, got {req.batch_size} x "
                                       f"{req.n_iter}")  # fmt: skip
    try:
        resolved = resolve_a1111_sampler(req.sampler_name or req.sampler_index, req.scheduler)
    except (ValueError, TypeError) as err:
        field = "scheduler" if str(err).startswith("scheduler") else "sampler_name"
        raise FieldError(field, str(err).split(" ", 1)[1]) from None
    if isinstance(req, Img2ImgRequest):
        if not 0.0 <= req.denoising_strength <= 1.0:
            raise FieldError("denoising_strength", f"must be in [0, 1], got {req.denoising_strength}")
        if req.inpainting_mask_invert not in (0, 1):
            raise FieldError("inpainting_mask_invert", f"must be 0 or 1, got {req.inpainting_mask_invert}")
        if len(req.init_images) > limits.max_batch:
            raise FieldError("init_images", f"at most {limits.max_batch} images, got {len(req.init_images)}")
    return resolved


def decode_image(data: str, field: str, max_pixels: int, mode: str = "RGB") -> Any:
    """A PIL image (converted to ``mode``) from base64 ``data`` (a ``data:image/...;base64,`` prefix is allowed);
    :class:`FieldError` naming ``field`` when it is not base64, not an image, or has more than ``max_pixels``
    pixels (checked from the header, before decoding the pixels)."""
    from PIL import Image

    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(field, "is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        width, height = image.size
        if width * height > max_pixels:
            raise FieldError(field, f"image is {width}x{height}, more than {max_pixels} pixels")
        image.load()
        return image.convert(mode)
    except FieldError:
        raise
    except Exception:  # PIL raises many kinds for a broken file; none of them reaches the client
        raise FieldError(field, "is not a readable image (PNG, JPEG or WebP)") from None
