"""Multi-head attention with Diffusers' keys (``to_q``, ``to_k``, ``to_v``, ``to_out.0``, ``group_norm``,
``norm_cross``), computed with ``torch.nn.functional.scaled_dot_product_attention``.

One module serves three uses:

* spatial self-attention in UNet / VAE blocks: input ``(B, C, H, W)``, optional GroupNorm, a residual
  connection and ``rescale_output_factor``; output ``(B, C, H, W)``;
* token self-attention: input ``(B, N, query_dim)``;
* cross-attention (``cross_attention_dim``): keys and values from ``encoder_hidden_states`` ``(B, M, dim)``.

``set_attention_slice(k)`` computes ``k`` heads at a time (less peak memory, same result).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import group_norm_act, needs_graph

CROSS_ATTENTION_NORMS = (None, "layer_norm", "group_norm")


class Attention(nn.Module):
    """Scaled dot-product attention with ``heads`` heads of size ``dim_head`` (see the module docstring)."""

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        cross_attention_norm: str | None = None,
        cross_attention_norm_num_groups: int = 32,
        norm_num_groups: int | None = None,
        spatial_norm_dim: int | None = None,
        out_bias: bool = True,
        scale_qk: bool = True,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
        residual_connection: bool = False,
        _from_deprecated_attn_block: bool = False,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("query_dim", query_dim), ("heads", heads), ("dim_head", dim_head)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if cross_attention_norm not in CROSS_ATTENTION_NORMS:
            raise ValueError(f"cross_attention_norm={cross_attention_norm!r} must be one of {CROSS_ATTENTION_NORMS}")
        if spatial_norm_dim is not None:
            raise ValueError("spatial_norm_dim is not supported (MoVQ spatial norm); use None")
        if norm_num_groups is not None and query_dim % norm_num_groups != 0:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide query_dim={query_dim}")
        self.inner_dim = out_dim if out_dim is not None else dim_head * heads
        self.query_dim = query_dim
        self.use_bias = bias
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.dropout = dropout
        self.out_dim = out_dim if out_dim is not None else query_dim
        self.scale_qk = scale_qk
        self.scale = dim_head**-0.5 if scale_qk else 1.0
        self.heads = out_dim // dim_head if out_dim is not None else heads
        self.sliceable_head_dim = heads
        self.slice_size: int | None = None
        self._from_deprecated_attn_block = _from_deprecated_attn_block

        self.group_norm = (
            nn.GroupNorm(norm_num_groups, query_dim, eps=eps, affine=True) if norm_num_groups is not None else None
        )
        self.spatial_norm = None
        if cross_attention_norm == "layer_norm":
            self.norm_cross: nn.Module | None = nn.LayerNorm(self.cross_attention_dim)
        elif cross_attention_norm == "group_norm":
            self.norm_cross = nn.GroupNorm(cross_attention_norm_num_groups, self.cross_attention_dim, eps=1e-5)
        else:
            self.norm_cross = None
        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_v = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, self.out_dim, bias=out_bias), nn.Dropout(dropout)])

    # ---- slicing ---------------------------------------------------------------------------------------
    def set_attention_slice(self, slice_size: int | None) -> None:
        """Compute ``slice_size`` heads at a time (``None``: all at once)."""
        if slice_size is not None and (
            isinstance(slice_size, bool) or not isinstance(slice_size, int) or not 1 <= slice_size <= self.heads
        ):
            raise ValueError(f"slice_size={slice_size!r} must be None or an int in [1, {self.heads}] (the heads)")
        self.slice_size = slice_size

    def set_processor(self, processor) -> None:
        """Diffusers compatibility: any processor request selects the built-in SDPA path (unsliced)."""
        self.slice_size = None

    # ---- forward ---------------------------------------------------------------------------------------
    def _mask(self, mask: torch.Tensor | None, batch: int, kv_len: int, dtype: torch.dtype) -> torch.Tensor | None:
        """An additive bias (or boolean keep-mask) broadcastable to ``(B, heads, N, M)``."""
        if mask is None:
            return None
        if mask.shape[-1] != kv_len:
            raise ValueError(f"attention_mask of shape {tuple(mask.shape)} must end in the key length {kv_len}")
        if mask.dtype != torch.bool:
            mask = mask.to(dtype)
        if mask.ndim == 2:  # (B, M)
            return mask[:, None, None, :]
        if mask.ndim == 3:
            if mask.shape[0] == batch * self.heads and batch * self.heads != batch:  # Diffusers' (B*heads, N, M)
                return mask.reshape(batch, self.heads, mask.shape[1], kv_len)
            return mask[:, None]  # (B, 1|N, M)
        return mask

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        dtype = q.dtype
        if self.upcast_attention and dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
            mask = mask.float() if mask is not None and mask.is_floating_point() else mask
        if self.slice_size is None or self.slice_size >= q.shape[1]:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:
            parts = []
            for start in range(0, q.shape[1], self.slice_size):
                sl = slice(start, start + self.slice_size)
                m = mask[:, sl] if mask is not None and mask.ndim == 4 and mask.shape[1] > 1 else mask
                parts.append(
                    F.scaled_dot_product_attention(q[:, sl], k[:, sl], v[:, sl], attn_mask=m, scale=self.scale)
                )
            out = torch.cat(parts, dim=1)
        return out.to(dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **cross_attention_kwargs,
    ) -> torch.Tensor:
        """``hidden_states`` ``(B, C, H, W)`` or ``(B, N, query_dim)``; ``encoder_hidden_states`` ``(B, M,
        cross_attention_dim)``; ``attention_mask`` an additive bias (or bool keep-mask) ``(B, M)``, ``(B, 1|N, M)``
        or ``(B, heads, N, M)``. Returns the input's shape (``out_dim`` features)."""
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
            if self.group_norm is not None:
                hidden_states = group_norm_act(hidden_states, self.group_norm, None)
            # (B, C, H, W) -> (B, H*W, C): a free view when the map is channels-last.
            tokens = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        else:
            batch = hidden_states.shape[0]
            tokens = hidden_states
            if self.group_norm is not None:
                tokens = self.group_norm(tokens.transpose(1, 2)).transpose(1, 2)

        context = tokens if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and self.norm_cross is not None:
            if isinstance(self.norm_cross, nn.GroupNorm):
                context = self.norm_cross(context.transpose(1, 2)).transpose(1, 2)
            else:
                context = self.norm_cross(context)

        head_dim = self.inner_dim // self.heads
        q = self.to_q(tokens).view(batch, -1, self.heads, head_dim).transpose(1, 2)
        k = self.to_k(context).view(batch, -1, self.heads, head_dim).transpose(1, 2)
        v = self.to_v(context).view(batch, -1, self.heads, head_dim).transpose(1, 2)
        mask = self._mask(attention_mask, batch, k.shape[2], q.dtype)
        out = self._attend(q, k, v, mask)  # (B, heads, N, d)
        out = out.transpose(1, 2).reshape(batch, -1, self.inner_dim)
        out = self.to_out[1](self.to_out[0](out))

        if spatial:
            out = out.view(batch, height, width, self.out_dim).permute(0, 3, 1, 2)
        if self.residual_connection:
            if needs_graph(out, residual):
                out = residual + out  # the residual's memory format (see cpu_kernels.residual_add)
            else:
                out = out.add_(residual)
        if self.rescale_output_factor != 1:
            out = out / self.rescale_output_factor
        return out
