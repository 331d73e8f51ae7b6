"""The text side of the Stable Diffusion pipelines: CLIP tokenization, prompt embeddings (with ``clip_skip``),
the negative prompt for classifier-free guidance, and the checks of the prompt arguments."""

from __future__ import annotations

import threading
import warnings
from typing import Any

import torch

from ...loaders.scale import lora_scale as scaled_lora

__all__ = ["PromptEncodingMixin", "check_prompt_arguments"]

# A fast (Rust) tokenizer sets its padding/truncation mode on the shared backend object for each call, so two
# threads tokenizing at once (one with padding="longest") can get each other's padding: one lock for all calls.
_TOKENIZER_LOCK = threading.Lock()


def check_prompt_arguments(prompt: Any, prompt_embeds: Any, negative_prompt: Any, negative_prompt_embeds: Any) -> int:
    """Validate ``prompt`` / ``prompt_embeds`` and their negatives (one of each pair, matching batch and shape);
    return the number of prompts."""
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("pass either prompt or prompt_embeds, not both")
    if prompt is None and prompt_embeds is None:
        raise ValueError("prompt is missing: pass prompt (a string or list of strings) or prompt_embeds")
    if prompt is not None:
        if isinstance(prompt, str):
            batch = 1
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            batch = len(prompt)
        else:
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r:.80}")
    else:
        if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3:
            raise ValueError("prompt_embeds must be a tensor (batch, tokens, dim)")
        batch = prompt_embeds.shape[0]
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        if not (isinstance(negative_prompt, (list, tuple)) and all(isinstance(p, str) for p in negative_prompt)):
            raise ValueError(f"negative_prompt must be a string or a list of strings, got {negative_prompt!r:.80}")
        if len(negative_prompt) != batch:
            raise ValueError(
                f"negative_prompt has {len(negative_prompt)} entries but prompt has {batch}; pass one negative "
                "prompt, or one per prompt"
            )
    if negative_prompt_embeds is not None:
        if prompt_embeds is None:
            raise ValueError("negative_prompt_embeds needs prompt_embeds (of the same shape) instead of prompt")
        if not isinstance(negative_prompt_embeds, torch.Tensor) or negative_prompt_embeds.shape != prompt_embeds.shape:
            shape = tuple(getattr(negative_prompt_embeds, "shape", ()))
            raise ValueError(
                f"negative_prompt_embeds must have the shape of prompt_embeds {tuple(prompt_embeds.shape)}, got {shape}"
            )
    return batch


class PromptEncodingMixin:
    """Prompt encoding for a pipeline with ``tokenizer`` (CLIPTokenizer) and ``text_encoder`` (CLIPTextModel)
    components; also reads ``unet`` for the dtype when there is no text encoder."""

    def _tokenize(self, texts: list[str], max_length: int, warn: bool) -> Any:
        with _TOKENIZER_LOCK:
            tokens = self.tokenizer(
                texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
            )
            full = self.tokenizer(texts, padding="longest", return_tensors="pt").input_ids if warn else None
        if warn:
            if full.shape[-1] > tokens.input_ids.shape[-1]:
                removed = self.tokenizer.batch_decode(full[:, max_length - 1 : -1])
                warnings.warn(
                    f"prompt: the text encoder reads at most {max_length} tokens; this part was cut off: {removed}",
                    stacklevel=4,
                )
        return tokens

    def _text_embeddings(
        self, texts: list[str], device, clip_skip: int | None, max_length: int, warn: bool, lora_scale=None
    ):
        """Hidden states (batch, tokens, dim) of the text encoder; ``clip_skip`` layers before the last; its LoRA
        layers scaled by ``lora_scale`` (this thread only)."""
        tokens = self._tokenize(texts, max_length, warn)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        ids = tokens.input_ids.to(device)
        with scaled_lora(lora_scale, self.text_encoder):
            if clip_skip is None:
                return self.text_encoder(ids, attention_mask=mask)[0]
            hidden = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        text_model = getattr(self.text_encoder, "text_model", self.text_encoder)
        return text_model.final_layer_norm(hidden[-(clip_skip + 1)])

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device | str | None,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text -> (prompt_embeds, negative_prompt_embeds), each (batch * num_images_per_prompt, tokens, dim).

        ``negative_prompt_embeds`` is None without classifier-free guidance; an absent ``negative_prompt`` means
        the empty prompt. Prompts longer than the tokenizer's ``model_max_length`` are cut with a warning.
        ``lora_scale`` scales the text encoder's LoRA layers during this call (thread-safe).
        """
        device = self.device if device is None else device
        if prompt_embeds is None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            max_length = self.tokenizer.model_max_length
            prompt_embeds = self._text_embeddings(texts, device, clip_skip, max_length, True, lora_scale)
        batch_size = prompt_embeds.shape[0]
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                negatives = [""] * batch_size
            elif isinstance(negative_prompt, str):
                negatives = [negative_prompt] * batch_size
            else:
                negatives = list(negative_prompt)
                if len(negatives) != batch_size:
                    raise ValueError(
                        f"negative_prompt has {len(negatives)} entries but prompt has {batch_size}; pass one "
                        "negative prompt, or one per prompt"
                    )
            negative_prompt_embeds = self._text_embeddings(
                negatives, device, None, prompt_embeds.shape[1], False, lora_scale
            )
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds
