"""UNet2DConditionModel: the text-conditioned latent UNet of Stable Diffusion 1.x / 2.x / SDXL.

Constructor arguments, defaults, config keys and state-dict keys follow Diffusers, so a ``unet/`` folder written
by Diffusers loads unchanged, and layers are created in Diffusers' order (after ``torch.manual_seed(s)`` a new model
starts from Diffusers' weights). The per-block settings are resolved and checked in ``unet_condition_config.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..configuration import ConfigMixin, register_to_config
from ..utils.outputs import BaseOutput
from .feature_cache import UNetFeatureCache
from .layers.activations import get_activation
from .layers.cpu_kernels import conv2d, group_norm_act, use_channels_last
from .layers.embeddings import TimestepEmbedding, Timesteps
from .layers.freeu import check_freeu_factors, set_freeu
from .modeling import ModelMixin
from .unet_condition_config import (
    build_class_embedding,
    build_down_block,
    build_mid_block,
    build_time_proj,
    build_up_block,
    check_forward_inputs,
    plan_blocks,
)


@dataclass
class UNet2DConditionOutput(BaseOutput):
    """``sample``: ``(B, out_channels, H, W)``, the model's prediction (noise, v or x0, as it was trained)."""

    sample: torch.Tensor = None


class UNet2DConditionModel(ModelMixin, ConfigMixin):
    """A UNet that denoises ``(B, in_channels, H, W)`` latents given a timestep and a context sequence
    ``encoder_hidden_states`` ``(B, M, cross_attention_dim)`` (CLIP text features), through cross-attention.

    In configs ``attention_head_dim`` holds the *number of heads* per block when ``num_attention_heads`` is None
    (a historic Diffusers naming quirk kept for checkpoint compatibility).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple[int, ...] | tuple[tuple[int, ...], ...] = 1,
        reverse_transformer_layers_per_block: tuple[tuple[int, ...], ...] | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
    ) -> None:
        super().__init__()
        self.sample_size = sample_size
        args = dict(locals())
        args.pop("self")
        args.pop("__class__", None)
        plan = plan_blocks(args)
        if plan.encoder_hid_dim_type != encoder_hid_dim_type:
            self.register_to_config(encoder_hid_dim_type=plan.encoder_hid_dim_type)
        channels = plan.block_out_channels

        for name, kernel in (("conv_in_kernel", conv_in_kernel), ("conv_out_kernel", conv_out_kernel)):
            if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
                raise ValueError(f"{name}={kernel!r} must be a positive odd integer")
        self.conv_in = nn.Conv2d(in_channels, channels[0], conv_in_kernel, padding=(conv_in_kernel - 1) // 2)

        self.time_proj, timestep_input_dim, time_embed_dim = build_time_proj(args)
        self.time_embedding = TimestepEmbedding(
            timestep_input_dim,
            time_embed_dim,
            act_fn=act_fn,
            post_act_fn=timestep_post_act,
            cond_proj_dim=time_cond_proj_dim,
        )
        self.encoder_hid_proj = (
            nn.Linear(encoder_hid_dim, cross_attention_dim) if plan.encoder_hid_dim_type == "text_proj" else None
        )
        self.class_embedding = build_class_embedding(args, timestep_input_dim, time_embed_dim)
        if addition_embed_type == "text_time":
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        self.time_embed_act = None if time_embedding_act_fn is None else get_activation(time_embedding_act_fn)

        temb = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim
        self.down_blocks = nn.ModuleList(build_down_block(plan, i, temb) for i in range(len(channels)))
        self.up_blocks = nn.ModuleList()  # registered before the mid block, as in Diffusers (same parameter order)
        self.mid_block = build_mid_block(plan, temb)
        self.up_blocks.extend(build_up_block(plan, i, temb) for i in range(len(channels)))
        self.num_upsamplers = len(channels) - 1

        if norm_num_groups is not None:
            self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=norm_eps)
            self.conv_act = get_activation(act_fn)
        else:
            self.conv_norm_out = None
            self.conv_act = None
        self.conv_out = nn.Conv2d(channels[0], out_channels, conv_out_kernel, padding=(conv_out_kernel - 1) // 2)
        self._cross_dims = plan.context_dims

    # ---- attention slicing ------------------------------------------------------------------------------
    def _sliceable(self) -> list[nn.Module]:
        return [m for m in self.modules() if m is not self and hasattr(m, "set_attention_slice")]

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path_or_dict: Any, **kwargs: Any):
        """Load from an original LDM checkpoint file (see :mod:`torchdiffusion.single_file`); never downloads."""
        from ..single_file import load_model_from_single_file

        return load_model_from_single_file(cls, pretrained_model_link_or_path_or_dict, **kwargs)

    def set_attention_slice(self, slice_size: str | int | Sequence[int | None] | None = "auto") -> None:
        """Compute attention in slices of heads to save memory: ``"auto"`` (half the heads), ``"max"`` (one head at
        a time), an int (heads per slice, everywhere), a list (one entry per attention layer) or None (off)."""
        layers = self._sliceable()
        heads = [m.sliceable_head_dim for m in layers]
        if slice_size == "auto":
            sizes: list[int | None] = [h // 2 or 1 for h in heads]
        elif slice_size == "max":
            sizes = [1] * len(layers)
        elif slice_size is None or isinstance(slice_size, int):
            sizes = [slice_size] * len(layers)
        elif isinstance(slice_size, (list, tuple)):
            sizes = list(slice_size)
        else:
            raise ValueError(f"slice_size={slice_size!r} must be 'auto', 'max', an int, a list of ints or None")
        if len(sizes) != len(layers):
            raise ValueError(f"slice_size has {len(sizes)} entries but the model has {len(layers)} attention layers")
        for size, dim in zip(sizes, heads):
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= dim):
                raise ValueError(f"slice_size entry {size!r} must be an int in [1, {dim}] (the layer's heads) or None")
        for layer, size in zip(layers, sizes):
            layer.set_attention_slice(size)

    # ---- FreeU -------------------------------------------------------------------------------------------
    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """Turn on FreeU (Si et al. 2023): in the first two up levels, backbone features x ``b1`` / ``b2`` (first
        half of the channels) and the skips' lowest frequencies x ``s1`` / ``s2``. SD 1.x values from the
        paper's repository: ``s1=0.9, s2=0.2, b1=1.5, b2=1.6``."""
        check_freeu_factors(s1=s1, s2=s2, b1=b1, b2=b2)
        set_freeu(self.up_blocks, {"s1": s1, "s2": s2, "b1": b1, "b2": b2})

    def disable_freeu(self) -> None:
        """Turn FreeU off (the up blocks' ``s1``, ``s2``, ``b1``, ``b2`` become None)."""
        set_freeu(self.up_blocks, None)

    def set_default_attn_processor(self) -> None:
        """Back to plain (unsliced) scaled-dot-product attention everywhere."""
        for layer in self._sliceable():
            layer.set_attention_slice(None)

    # ---- forward ----------------------------------------------------------------------------------------
    def _time_embedding(self, sample, timestep, class_labels, timestep_cond, added):
        batch = sample.shape[0]
        if not torch.is_tensor(timestep):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
        timesteps = timestep.reshape(-1).to(sample.device).expand(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype), timestep_cond)
        if self.class_embedding is not None:
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(sample.dtype)
            class_emb = self.class_embedding(class_labels).to(sample.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if self.config.class_embeddings_concat else emb + class_emb
        if self.config.addition_embed_type == "text_time":
            text_embeds, time_ids = added["text_embeds"], added["time_ids"]
            time_embeds = self.add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)
            emb = emb + self.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        feature_cache: UNetFeatureCache | None = None,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict from ``sample`` ``(B, in_channels, H, W)`` at ``timestep`` (scalar, ``(1,)`` or ``(B,)``) given
        ``encoder_hidden_states`` ``(B, M, cross_attention_dim)``.

        ``attention_mask`` / ``encoder_attention_mask``: ``(B, M)`` keep(1)/discard(0) masks over the context
        tokens. ``added_cond_kwargs`` (SDXL, ``addition_embed_type="text_time"``): ``text_embeds`` ``(B, D)`` and
        ``time_ids`` ``(B, k)``. ``down_block_additional_residuals`` + ``mid_block_additional_residual``:
        ControlNet residuals, added to the skip tensors and the mid-block output. ``feature_cache``: this sampling
        run's :class:`~torchdiffusion.models.feature_cache.UNetFeatureCache`; between its full calls only the
        shallow levels run, on the deep features it recorded.
        """
        check_forward_inputs(
            self,
            sample,
            timestep,
            encoder_hidden_states,
            class_labels,
            timestep_cond,
            added_cond_kwargs,
            down_block_additional_residuals,
            mid_block_additional_residual,
        )
        up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        masks = [
            None if m is None else ((1 - m.to(sample.dtype)) * -10000.0).unsqueeze(1)
            for m in (attention_mask, encoder_attention_mask)
        ]
        attention_mask, encoder_attention_mask = masks
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self._time_embedding(sample, timestep, class_labels, timestep_cond, added_cond_kwargs)
        if self.encoder_hid_proj is not None:
            encoder_hidden_states = self.encoder_hid_proj(encoder_hidden_states)
        context = {
            "encoder_hidden_states": encoder_hidden_states,
            "attention_mask": attention_mask,
            "encoder_attention_mask": encoder_attention_mask,
        }

        is_controlnet = down_block_additional_residuals is not None and mid_block_additional_residual is not None
        intrablock = list(down_intrablock_additional_residuals or ())
        if down_block_additional_residuals is not None and not is_controlnet:  # legacy T2I-Adapter call
            intrablock = list(down_block_additional_residuals)

        if use_channels_last(sample, self):  # NHWC feature maps inside: oneDNN's fast convolutions, free token views
            sample = sample.contiguous(memory_format=torch.channels_last)
        deep = None if feature_cache is None else feature_cache.lookup(self, sample)
        live = len(self.down_blocks) if feature_cache is None else feature_cache.depth
        first_live_up = len(self.up_blocks) - live
        sample = conv2d(self.conv_in, sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks if deep is None else self.down_blocks[:live]:
            if getattr(block, "has_cross_attention", False):
                extra = {"additional_residuals": intrablock.pop(0)} if intrablock else {}
                sample, res = block(sample, emb, **context, **extra)
            else:
                sample, res = block(sample, emb)
                if intrablock:
                    sample = sample + intrablock.pop(0)
            skips += res
        if is_controlnet:
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))
        if deep is not None:  # cached call: the recorded deep features replace mid block and deep up blocks
            sample, skips = deep[0], skips[: feature_cache.skips_needed(self)]
        elif self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(sample, emb, **context)
            else:
                sample = self.mid_block(sample, emb)
            if intrablock and sample.shape == intrablock[0].shape:
                sample = sample + intrablock.pop(0)
        if is_controlnet and deep is None:
            sample = sample + mid_block_additional_residual

        for i, block in enumerate(self.up_blocks):
            if deep is not None and i < first_live_up:
                continue
            if feature_cache is not None and deep is None and i == first_live_up:
                feature_cache.store(sample)
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            if getattr(block, "has_cross_attention", False):
                sample = block(sample, res, emb, upsample_size=upsample_size, **context)
            else:
                sample = block(sample, res, emb, upsample_size=upsample_size)

        if self.conv_norm_out is not None:
            sample = group_norm_act(sample, self.conv_norm_out, self.conv_act)
        sample = conv2d(self.conv_out, sample).contiguous()
        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)
