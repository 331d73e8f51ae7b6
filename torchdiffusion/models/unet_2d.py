"""``UNet2DModel``: the unconditional / class-conditional image UNet of DDPM, with Diffusers' constructor
arguments, defaults, config keys and state-dict keys (a Diffusers checkpoint loads with ``strict=True``).

On the CPU the feature maps are carried channels-last inside ``forward`` (oneDNN's fastest convolution layout);
the output is returned in the ordinary contiguous layout, so nothing changes for the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..configuration import ConfigMixin, register_to_config
from ..utils.outputs import BaseOutput
from .feature_cache import UNetFeatureCache
from .layers.activations import ACTIVATIONS
from .layers.blocks_common import score_sde_groups
from .layers.cpu_kernels import conv2d, group_norm_act, use_channels_last
from .layers.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps
from .layers.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from .modeling import ModelMixin

DOWN_TYPES = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D")
UP_TYPES = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D")
TIME_EMBEDDING_TYPES = ("positional", "fourier", "learned")
CLASS_EMBED_TYPES = (None, "timestep", "identity")


@dataclass
class UNet2DOutput(BaseOutput):
    """``sample``: ``(B, out_channels, H, W)``, the model's prediction (noise, x0 or v, per the scheduler)."""

    sample: torch.Tensor


def _strip(name: object) -> object:
    return name[7:] if isinstance(name, str) and name.startswith("UNetRes") else name


def _check_args(a: dict) -> None:
    """Raise ``ValueError`` naming the first bad constructor argument in ``a``."""
    down, up, channels = a["down_block_types"], a["up_block_types"], a["block_out_channels"]
    for name, types, allowed in (("down_block_types", down, DOWN_TYPES), ("up_block_types", up, UP_TYPES)):
        if isinstance(types, str) or not isinstance(types, Sequence) or len(types) == 0:
            raise ValueError(f"{name}={types!r} must be a non-empty list of block type names")
        bad = [t for t in types if _strip(t) not in allowed]
        if bad:
            raise ValueError(f"{name}={tuple(types)!r} has unsupported entries {bad}; allowed: {allowed}")
    if len(down) != len(up):
        raise ValueError(f"up_block_types has {len(up)} entries but down_block_types has {len(down)}; they must match")
    if isinstance(channels, (str, int)) or len(channels) != len(down):
        raise ValueError(f"block_out_channels={channels!r} must have one entry per down block ({len(down)} blocks)")
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
        raise ValueError(f"block_out_channels={tuple(channels)!r} must hold positive ints")
    for name in ("in_channels", "out_channels", "layers_per_block"):
        if isinstance(a[name], bool) or not isinstance(a[name], int) or a[name] < 1:
            raise ValueError(f"{name}={a[name]!r} must be a positive int")
    if a["mid_block_type"] not in (None, "UNetMidBlock2D"):
        raise ValueError(f"mid_block_type={a['mid_block_type']!r} must be 'UNetMidBlock2D' or None")
    groups = a["norm_num_groups"]
    plain = [i for i, (d, u) in enumerate(zip(down, reversed(up))) if "Skip" not in d or "Skip" not in u]
    if groups is None:  # score-SDE / NCSN++: every GroupNorm takes min(C // 4, 32) groups
        if plain:
            raise ValueError(
                f"norm_num_groups=None (min(C // 4, 32) groups, the score-SDE setting) needs Skip blocks at every "
                f"level; levels {plain} of down_block_types/up_block_types are not Skip blocks"
            )
        for c in {channels[0], channels[-1]}:
            if c < 4 or c % score_sde_groups(c):
                raise ValueError(
                    f"norm_num_groups=None gives min({c} // 4, 32) groups, which must divide block_out_channels "
                    f"entry {c}"
                )
    else:
        need = sorted({0, len(channels) - 1, *plain})
        bad = isinstance(groups, bool) or not isinstance(groups, int) or groups < 1
        if bad or any(channels[i] % groups for i in need):
            raise ValueError(
                f"norm_num_groups={groups!r} must be None or a positive int dividing block_out_channels={channels}"
            )
    attn_groups = a["attn_norm_num_groups"]
    if attn_groups is not None and (not isinstance(attn_groups, int) or attn_groups < 1 or channels[-1] % attn_groups):
        raise ValueError(f"attn_norm_num_groups={attn_groups!r} must be None or a divisor of {channels[-1]}")
    head = a["attention_head_dim"]
    if head is not None and (isinstance(head, bool) or not isinstance(head, int) or head < 1):
        raise ValueError(f"attention_head_dim={head!r} must be a positive int or None (one head per block)")
    if not isinstance(a["act_fn"], str) or a["act_fn"].lower() not in ACTIVATIONS:
        raise ValueError(f"act_fn={a['act_fn']!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    if a["time_embedding_type"] not in TIME_EMBEDDING_TYPES:
        raise ValueError(f"time_embedding_type={a['time_embedding_type']!r} must be one of {TIME_EMBEDDING_TYPES}")
    if a["time_embedding_type"] == "learned" and not (isinstance(a["num_train_timesteps"], int)):
        raise ValueError("time_embedding_type='learned' needs num_train_timesteps (the embedding table's size)")
    if a["resnet_time_scale_shift"] not in ("default", "scale_shift"):
        raise ValueError(f"resnet_time_scale_shift={a['resnet_time_scale_shift']!r} must be 'default' or 'scale_shift'")
    for name in ("downsample_type", "upsample_type"):
        if a[name] not in ("conv", "resnet"):
            raise ValueError(f"{name}={a[name]!r} must be 'conv' or 'resnet'")
    if a["class_embed_type"] not in CLASS_EMBED_TYPES:
        raise ValueError(f"class_embed_type={a['class_embed_type']!r} must be one of {CLASS_EMBED_TYPES}")
    n = a["num_class_embeds"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"num_class_embeds={n!r} must be a positive int or None")
    if not 0 <= a["dropout"] < 1:
        raise ValueError(f"dropout={a['dropout']!r} must be in [0, 1)")


def _check_indices(index: torch.Tensor, size: int, name: str, size_name: str) -> None:
    """Integer indices into an embedding table of ``size`` rows, else ``ValueError`` naming ``name``."""
    if index.is_floating_point() or index.is_complex():
        if not torch.equal(index, index.round()):
            raise ValueError(f"{name} must hold integer indices for the embedding table, got {index.tolist()}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
        raise ValueError(f"{name}={index.tolist()} must lie in [0, {size}) ({size_name}={size})")


class UNet2DModel(ModelMixin, ConfigMixin):
    """A 2-D UNet ``(B, in_channels, H, W), t -> (B, out_channels, H, W)``: conv_in, down blocks (each keeping
    skip tensors), a mid block (resnet, attention, resnet), up blocks consuming the skips, GroupNorm-SiLU-conv_out.

    ``time_embedding_type``: ``"positional"`` (sinusoidal), ``"fourier"`` (Gaussian Fourier features of log(sigma);
    the output is divided by sigma) or ``"learned"`` (an embedding table of ``num_train_timesteps`` rows).
    Class conditioning: ``num_class_embeds`` (a table), or ``class_embed_type`` ``"timestep"`` / ``"identity"``.
    ``norm_num_groups=None`` (score-SDE / NCSN++ models, Skip blocks at every level): every GroupNorm takes
    ``min(C // 4, 32)`` groups. Layers are created in Diffusers' order, so after ``torch.manual_seed(s)`` a new
    model starts from the same weights as Diffusers' ``UNet2DModel`` with the same arguments.
    """

    _supports_gradient_checkpointing = True
    _legacy_key_renames = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int | None = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
    ) -> None:
        super().__init__()
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        _check_args(args)
        self.sample_size = sample_size
        channels = list(block_out_channels)
        c0 = channels[0]
        time_embed_dim = time_embedding_dim or c0 * 4

        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=3, padding=(1, 1))
        if time_embedding_type == "fourier":
            self.time_proj: nn.Module = GaussianFourierProjection(embedding_size=c0, scale=16)
            timestep_input_dim = 2 * c0
        elif time_embedding_type == "positional":
            self.time_proj = Timesteps(c0, flip_sin_to_cos, freq_shift)
            timestep_input_dim = c0
        else:
            self.time_proj = nn.Embedding(num_train_timesteps, c0)
            timestep_input_dim = c0
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim)

        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding: nn.Module | None = nn.Embedding(num_class_embeds, time_embed_dim)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        else:
            self.class_embedding = None

        common = dict(
            temb_channels=time_embed_dim,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            resnet_time_scale_shift=resnet_time_scale_shift,
            dropout=dropout,
        )
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()  # registered before the mid block, as in Diffusers (same parameter order)
        for i, kind in enumerate(down_block_types):
            self.down_blocks.append(get_down_block(
                kind, num_layers=layers_per_block, in_channels=channels[max(i - 1, 0)], out_channels=channels[i],
                add_downsample=i < len(channels) - 1, downsample_padding=downsample_padding,
                attention_head_dim=attention_head_dim if attention_head_dim is not None else channels[i],
                downsample_type=downsample_type, **common,
            ))  # fmt: skip
        self.mid_block = None
        if mid_block_type is not None:
            self.mid_block = UNetMidBlock2D(
                in_channels=channels[-1], temb_channels=time_embed_dim, dropout=dropout, resnet_eps=norm_eps,
                resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor,
                resnet_time_scale_shift=resnet_time_scale_shift,
                attention_head_dim=attention_head_dim if attention_head_dim is not None else channels[-1],
                resnet_groups=norm_num_groups, attn_groups=attn_norm_num_groups, add_attention=add_attention,
            )  # fmt: skip
        rev = list(reversed(channels))
        for i, kind in enumerate(up_block_types):
            self.up_blocks.append(get_up_block(
                kind, num_layers=layers_per_block + 1, in_channels=rev[min(i + 1, len(rev) - 1)],
                out_channels=rev[i], prev_output_channel=rev[max(i - 1, 0)], add_upsample=i < len(rev) - 1,
                attention_head_dim=attention_head_dim if attention_head_dim is not None else rev[i],
                upsample_type=upsample_type, resolution_idx=i, **common,
            ))  # fmt: skip
        out_groups = score_sde_groups(c0) if norm_num_groups is None else norm_num_groups
        self.conv_norm_out = nn.GroupNorm(num_channels=c0, num_groups=out_groups, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(c0, out_channels, kernel_size=3, padding=1)

    # ---- forward ------------------------------------------------------------------------------------------
    def _timesteps(self, timestep: torch.Tensor | float | int, sample: torch.Tensor) -> torch.Tensor:
        """Any accepted timestep form -> a ``(B,)`` tensor on the sample's device."""
        batch = sample.shape[0]
        if not torch.is_tensor(timestep):
            if isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
                raise TypeError(f"timestep must be an int, a float or a tensor, got {type(timestep).__name__}")
            dtype = torch.long if isinstance(timestep, int) else torch.float32
            return torch.full((batch,), timestep, dtype=dtype, device=sample.device)
        if timestep.ndim > 1 or timestep.numel() not in (1, batch):
            raise ValueError(
                f"timestep of shape {tuple(timestep.shape)} must be a scalar, shape (1,) or shape (batch={batch},)"
            )
        return timestep.reshape(-1).to(sample.device).expand(batch)

    def _embedding(self, timesteps: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.time_proj, nn.Embedding):
            _check_indices(timesteps, self.time_proj.num_embeddings, "timestep", "num_train_timesteps")
            timesteps = timesteps.long()
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype))
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError("class_labels were given but the model has no class embedding (num_class_embeds "
                                 "and class_embed_type are None)")  # fmt: skip
            return emb
        if class_labels is None:
            raise ValueError(
                f"class_labels is required: the model is class-conditional (class_embed_type="
                f"{self.config.class_embed_type!r}, num_class_embeds={self.config.num_class_embeds!r})"
            )
        if not torch.is_tensor(class_labels):
            raise TypeError(f"class_labels must be a tensor, got {type(class_labels).__name__}")
        class_labels = class_labels.to(emb.device)
        table = self.class_embedding if isinstance(self.class_embedding, nn.Embedding) else None
        if table is not None:
            _check_indices(class_labels, table.num_embeddings, "class_labels", "num_class_embeds")
            class_labels = class_labels.long()
        if self.config.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels).to(dtype=self.dtype)
        return emb + self.class_embedding(class_labels).to(dtype=self.dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        feature_cache: UNetFeatureCache | None = None,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predict from ``sample`` ``(B, in_channels, H, W)`` at ``timestep`` (a number, a 0-d / ``(1,)`` tensor, or
        ``(B,)``); ``class_labels`` ``(B,)`` for class-conditional models. Returns :class:`UNet2DOutput` (or a
        1-tuple with ``return_dict=False``) holding ``(B, out_channels, H, W)``. ``feature_cache``: this sampling
        run's :class:`~torchdiffusion.models.feature_cache.UNetFeatureCache` (between its full calls only the shallow
        levels run, on the deep features it recorded)."""
        if not torch.is_tensor(sample) or sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            shape = tuple(sample.shape) if torch.is_tensor(sample) else type(sample).__name__
            raise ValueError(
                f"sample must have shape (batch, in_channels={self.config.in_channels}, H, W), got {shape}"
            )
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        timesteps = self._timesteps(timestep, sample)
        emb = self._embedding(timesteps, class_labels)

        if use_channels_last(sample, self):
            sample = sample.contiguous(memory_format=torch.channels_last)
        deep = None if feature_cache is None else feature_cache.lookup(self, sample)
        live = len(self.down_blocks) if feature_cache is None else feature_cache.depth
        first_live_up = len(self.up_blocks) - live
        skip_sample = sample
        sample = conv2d(self.conv_in, sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks if deep is None else self.down_blocks[:live]:
            if getattr(block, "skip_conv", None) is not None or hasattr(block, "resnet_down"):
                sample, res, skip_sample = block(sample, emb, skip_sample)
            else:
                sample, res = block(sample, emb)
            skips += res
        if deep is not None:  # cached call: the recorded deep features replace mid block and deep up blocks
            (sample, skip_sample), skips = deep, skips[: feature_cache.skips_needed(self)]
        else:
            skip_sample = None
            if self.mid_block is not None:
                sample = self.mid_block(sample, emb)

        for i, block in enumerate(self.up_blocks):
            if deep is not None and i < first_live_up:
                continue
            if feature_cache is not None and deep is None and i == first_live_up:
                feature_cache.store(sample, skip_sample)
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            if hasattr(block, "resnet_up"):
                sample, skip_sample = block(sample, res, emb, skip_sample)
            else:
                sample = block(sample, res, emb)
        sample = conv2d(self.conv_out, group_norm_act(sample, self.conv_norm_out, self.conv_act))
        if skip_sample is not None:
            sample = sample + skip_sample
        if self.config.time_embedding_type == "fourier":
            sample = sample / timesteps.reshape(-1, 1, 1, 1)
        sample = sample.contiguous()
        return UNet2DOutput(sample=sample) if return_dict else (sample,)
