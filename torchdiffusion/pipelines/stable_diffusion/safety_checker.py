"""StableDiffusionSafetyChecker: the NSFW filter that ships with Stable Diffusion 1.x folders.

A CLIP vision tower (transformers ``CLIPVisionModel``) plus a projection embeds each image; the embedding is
compared (cosine similarity) with 17 concept embeddings and 3 "special care" embeddings, each with its own
threshold. An image is flagged when any concept score ``cos - threshold`` (rounded to 3 decimals) is positive;
once a special-care concept fires, every later score gets +0.01. Flagged images are replaced by zeros.

The folder format is transformers' (what Diffusers reads and writes): ``config.json`` holds a ``CLIPConfig``
(``text_config``, ``vision_config``, ``projection_dim``) and the weights are ``model[.variant].safetensors`` or
``pytorch_model[.variant].bin`` with the keys ``vision_model.*``, ``visual_projection.weight``,
``concept_embeds``, ``special_care_embeds``, ``concept_embeds_weights``, ``special_care_embeds_weights``.
Checkpoints written by transformers 4.x nest the tower one level deeper (``vision_model.vision_model.*``);
both spellings load.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from ...configuration import ConfigMixin, register_to_config
from ...models.modeling import ModelMixin

__all__ = ["StableDiffusionSafetyChecker", "nsfw_flags", "cosine_similarity_matrix"]

logger = logging.getLogger(__name__)

NUM_CONCEPTS = 17
NUM_SPECIAL = 3
SPECIAL_CARE_BONUS = 0.01  # added to the scores after a special-care concept fires
_CONFIG_KEYS = ("text_config", "vision_config", "projection_dim", "logit_scale_init_value")


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (n, m) between the rows of ``a`` (n, d) and ``b`` (m, d)."""
    return nn.functional.normalize(a) @ nn.functional.normalize(b).t()


def nsfw_flags(
    special_cos: np.ndarray,
    special_thresholds: np.ndarray,
    concept_cos: np.ndarray,
    concept_thresholds: np.ndarray,
) -> list[bool]:
    """One flag per image from its cosine similarities to the special-care concepts (batch, 3) and the concepts
    (batch, 17) and their thresholds (3,) / (17,): True when some concept's score is > 0 (see module doc)."""
    flags = []
    for special_row, concept_row in zip(special_cos, concept_cos):
        bonus = 0.0
        for cos, threshold in zip(special_row, special_thresholds):
            if round(cos - float(threshold) + bonus, 3) > 0:
                bonus = SPECIAL_CARE_BONUS
        flags.append(any(round(cos - float(t) + bonus, 3) > 0 for cos, t in zip(concept_row, concept_thresholds)))
    return flags


class StableDiffusionSafetyChecker(ModelMixin, ConfigMixin):
    """CLIP-based NSFW image filter with Diffusers' parameter names and decisions.

    ``text_config`` / ``vision_config``: the ``CLIPConfig`` sub-configs as dicts (only the vision tower is
    built); ``projection_dim``: size of the image embedding compared with the concept embeddings.
    """

    _weights_layout = "transformers"  # model.safetensors, as the transformers CLIP model Diffusers wraps

    config_name = "config.json"
    _pipeline_library = "stable_diffusion"  # what model_index.json names as the library (Diffusers' spelling)
    main_input_name = "clip_input"

    @register_to_config
    def __init__(
        self,
        text_config: dict | None = None,
        vision_config: dict | None = None,
        projection_dim: int = 768,
        logit_scale_init_value: float = 2.6592,
    ) -> None:
        super().__init__()
        from transformers import CLIPVisionModel

        clip = self.clip_config()
        self.vision_model = CLIPVisionModel(clip.vision_config)
        self.visual_projection = nn.Linear(clip.vision_config.hidden_size, clip.projection_dim, bias=False)
        self.concept_embeds = nn.Parameter(torch.ones(NUM_CONCEPTS, clip.projection_dim), requires_grad=False)
        self.special_care_embeds = nn.Parameter(torch.ones(NUM_SPECIAL, clip.projection_dim), requires_grad=False)
        self.concept_embeds_weights = nn.Parameter(torch.ones(NUM_CONCEPTS), requires_grad=False)
        self.special_care_embeds_weights = nn.Parameter(torch.ones(NUM_SPECIAL), requires_grad=False)

    def clip_config(self):
        """This model's config as a transformers ``CLIPConfig`` (the format of its ``config.json``)."""
        from transformers import CLIPConfig

        kwargs = {k: self.config[k] for k in _CONFIG_KEYS if self.config.get(k) is not None}
        clip = CLIPConfig(**kwargs)
        clip.architectures = [type(self).__name__]
        return clip

    # ---- inference -------------------------------------------------------------------------------------
    @torch.no_grad()
    def image_embeds(self, clip_input: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (batch, projection_dim) of preprocessed pixels (batch, 3, size, size)."""
        pooled = self.vision_model(clip_input).pooler_output
        return self.visual_projection(pooled)

    @torch.no_grad()
    def forward(self, clip_input: torch.Tensor, images: Any) -> tuple[Any, list[bool]]:
        """Check ``images`` (a tensor (batch, ...), a numpy array or a list of either) given their CLIP pixels
        ``clip_input`` (batch, 3, size, size); return (the images with flagged ones zeroed, one flag per image).
        The images are changed in place, like Diffusers does."""
        embeds = self.image_embeds(clip_input)
        special_cos = cosine_similarity_matrix(embeds, self.special_care_embeds).cpu().float().numpy()
        concept_cos = cosine_similarity_matrix(embeds, self.concept_embeds).cpu().float().numpy()
        flags = nsfw_flags(
            special_cos,
            self.special_care_embeds_weights.detach().cpu().float().numpy(),
            concept_cos,
            self.concept_embeds_weights.detach().cpu().float().numpy(),
        )
        if len(images) != len(flags):
            raise ValueError(f"images has {len(images)} entries but clip_input has {len(flags)}")
        for i, flagged in enumerate(flags):
            if flagged:
                image = images[i]
                images[i] = torch.zeros_like(image) if torch.is_tensor(image) else np.zeros(np.shape(image))
        if any(flags):
            logger.warning(
                "Potential NSFW content was detected in %d of %d images; they are returned black. Try another "
                "prompt or seed.",
                sum(flags),
                len(flags),
            )
        return images, flags

    # ---- folders (transformers' layout) ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a ``safety_checker`` folder written by Diffusers/transformers or by :meth:`save_pretrained`.

        Keyword arguments: ``subfolder``, ``dtype`` (or its alias ``torch_dtype``), ``variant``,
        ``use_safetensors``, hub options.
        """
        from ...hub import HUB_KWARGS
        from ...weights import load_state_into, read_state_file, resolve_dtype

        hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
        subfolder = kwargs.pop("subfolder", None)
        torch_dtype = resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
        variant = kwargs.pop("variant", None)
        use_safetensors = kwargs.pop("use_safetensors", None)
        for ignored in ("low_cpu_mem_usage", "device_map"):
            kwargs.pop(ignored, None)
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected keyword argument(s): {', '.join(kwargs)}")
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        model = cls.from_config(config)
        files = _find_weight_files(pretrained_model_name_or_path, subfolder, variant, use_safetensors, hub_kwargs)
        state: dict[str, torch.Tensor] = {}
        for path in files:
            state.update(read_state_file(path))
        state = _match_tower_prefix(state, set(model.state_dict()))
        load_state_into(model, state, os.path.dirname(files[0]))
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        model.register_to_config(_name_or_path=os.fspath(pretrained_model_name_or_path))
        return model.eval()

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write ``config.json`` (a ``CLIPConfig``) and ``model[.variant].safetensors`` (or
        ``pytorch_model[.variant].bin``) as transformers does, so Diffusers loads the folder. One weights file
        (``max_shard_size`` is accepted and ignored: the SD checker is ~1.2 GB)."""
        from ...hub import check_plain_name, split_push_kwargs

        push, kwargs = split_push_kwargs(kwargs)
        if kwargs:
            raise TypeError(f"save_pretrained got unexpected keyword argument(s): {', '.join(kwargs)}")
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={os.fspath(save_directory)!r} is a file; it must be a folder")
        if variant is not None:
            check_plain_name(variant, "variant")
        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        clip = self.clip_config()
        clip.dtype = str(self.dtype).removeprefix("torch.")
        clip.to_json_file(os.path.join(save_directory, "config.json"))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(
                state, os.path.join(save_directory, _weights_file("model", "safetensors", variant)), {"format": "pt"}
            )
        else:
            torch.save(state, os.path.join(save_directory, _weights_file("pytorch_model", "bin", variant)))
        if push_to_hub:
            from ...hub import upload_saved_folder

            push.setdefault("repo_id", os.path.basename(os.path.normpath(os.fspath(save_directory))))
            upload_saved_folder(self, save_directory, **push)


def _weights_file(stem: str, ext: str, variant: str | None) -> str:
    return f"{stem}.{variant}.{ext}" if variant else f"{stem}.{ext}"


def _find_weight_files(root, subfolder, variant, use_safetensors, hub_kwargs: dict) -> list[str]:
    """transformers' weight files: one file, or the shards of its index (``model.safetensors.index.json``)."""
    from ...hub import check_plain_name, try_resolve_file
    from ...weights import _shards_from_index

    if variant is not None:
        check_plain_name(variant, "variant")
    kinds = [("model", "safetensors"), ("pytorch_model", "bin")]
    if use_safetensors:
        kinds = kinds[:1]
    elif use_safetensors is False:
        kinds = kinds[1:]
    tried = []
    for stem, ext in kinds:
        single = _weights_file(stem, ext, variant)
        index = f"{stem}.{ext}.index.{variant}.json" if variant else f"{stem}.{ext}.index.json"
        tried += [single, index]
        path = try_resolve_file(root, single, subfolder, **hub_kwargs)
        if path is not None:
            return [path]
        index_path = try_resolve_file(root, index, subfolder, **hub_kwargs)
        if index_path is not None:
            return _shards_from_index(root, index_path, subfolder, ext, **hub_kwargs)
    where = os.fspath(root) + (f"/{subfolder}" if subfolder else "")
    raise FileNotFoundError(f"no safety checker weights in {where}: looked for {', '.join(tried)}")


def _match_tower_prefix(state: dict[str, torch.Tensor], known: set[str]) -> dict[str, torch.Tensor]:
    """Rename ``vision_model.vision_model.*`` <-> ``vision_model.*`` to the spelling of the installed
    transformers (4.x nests the CLIP vision tower in ``CLIPVisionModel.vision_model``, 5.x does not)."""
    nested, flat = "vision_model.vision_model.", "vision_model."
    out = {}
    for key, value in state.items():
        if key not in known:
            if key.startswith(nested) and flat + key[len(nested) :] in known:
                key = flat + key[len(nested) :]
            elif key.startswith(flat) and nested + key[len(flat) :] in known:
                key = nested + key[len(flat) :]
        out[key] = value
    return out
