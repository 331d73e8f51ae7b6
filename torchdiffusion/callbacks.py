"""Step callbacks for ``callback_on_step_end``, with Diffusers' names and arguments (``diffusers.callbacks``).

A callback is called after every denoising step as ``callback(pipe, step_index, timestep, tensors) -> tensors``,
where ``tensors`` holds the pipeline tensors named in its ``tensor_inputs``. In this library what a callback
changes through ``pipe`` (e.g. ``pipe._guidance_scale``) belongs to the running call only: other calls of the same
pipeline, in other threads or later, are not affected.
"""

from __future__ import annotations

from typing import Any

import torch

from .configuration import ConfigMixin, register_to_config

__all__ = ["MultiPipelineCallbacks", "PipelineCallback", "SDCFGCutoffCallback"]


class PipelineCallback(ConfigMixin):
    """Base class of the ready-made step callbacks: a config (``cutoff_step_ratio`` xor ``cutoff_step_index``)
    saved as ``config.json``, the ``tensor_inputs`` it reads and replaces, and :meth:`callback_fn`.

    ``cutoff_step_ratio``: a float in [0, 1], the step ``int(num_timesteps * ratio)`` at which the callback acts;
    ``cutoff_step_index``: that step as an index instead. Exactly one of them must be given.
    """

    config_name = "config.json"
    tensor_inputs: list[str] = []

    @register_to_config
    def __init__(self, cutoff_step_ratio: float | None = 1.0, cutoff_step_index: int | None = None) -> None:
        if (cutoff_step_ratio is None) == (cutoff_step_index is None):
            raise ValueError("give exactly one of cutoff_step_ratio and cutoff_step_index")
        if cutoff_step_ratio is not None and (
            not isinstance(cutoff_step_ratio, float) or not 0.0 <= cutoff_step_ratio <= 1.0
        ):
            raise ValueError(f"cutoff_step_ratio must be a float in [0, 1], got {cutoff_step_ratio!r}")
        if cutoff_step_index is not None and (
            isinstance(cutoff_step_index, bool) or not isinstance(cutoff_step_index, int) or cutoff_step_index < 0
        ):
            raise ValueError(f"cutoff_step_index must be an int >= 0, got {cutoff_step_index!r}")

    def cutoff_step(self, pipeline: Any) -> int:
        """The step index at which the callback acts for ``pipeline``'s running call."""
        index = self.config.cutoff_step_index
        return index if index is not None else int(pipeline.num_timesteps * self.config.cutoff_step_ratio)

    def callback_fn(
        self, pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement callback_fn")

    def __call__(
        self, pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return self.callback_fn(pipeline, step_index, timestep, callback_kwargs)


class MultiPipelineCallbacks:
    """Several callbacks run in order as one; ``tensor_inputs`` is the union of theirs."""

    def __init__(self, callbacks: list[PipelineCallback]) -> None:
        self.callbacks = list(callbacks)

    @property
    def tensor_inputs(self) -> list[str]:
        return [name for callback in self.callbacks for name in callback.tensor_inputs]

    def __call__(
        self, pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        for callback in self.callbacks:
            callback_kwargs = callback(pipeline, step_index, timestep, callback_kwargs)
        return callback_kwargs


class SDCFGCutoffCallback(PipelineCallback):
    """Stop classifier-free guidance of a Stable Diffusion call after its cut-off step: at that step's end the
    call's guidance scale becomes 0 and ``prompt_embeds`` keeps its conditional half (batch, tokens, dim), so the
    remaining steps run the conditional branch alone (half the UNet batch). Same as ``guidance_end`` =
    ``cutoff_step_ratio`` in the SD pipelines.

    Unlike Diffusers' version, which keeps only the last row of the embeddings, the whole conditional half is
    kept (the same for one image; correct for a batch), and nothing changes when the call does not guide.
    """

    tensor_inputs = ["prompt_embeds"]

    def callback_fn(
        self, pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        if step_index != self.cutoff_step(pipeline) or not pipeline.do_classifier_free_guidance:
            return callback_kwargs
        embeds = callback_kwargs[self.tensor_inputs[0]]
        callback_kwargs[self.tensor_inputs[0]] = embeds[embeds.shape[0] // 2 :]
        pipeline._guidance_scale = 0.0
        return callback_kwargs
