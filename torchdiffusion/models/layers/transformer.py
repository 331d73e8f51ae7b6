"""The spatial transformer of Stable Diffusion UNets: ``Transformer2DModel`` (continuous input) and
``BasicTransformerBlock`` (self-attention, cross-attention, GEGLU feed-forward), with Diffusers' key names.

Layout: feature maps enter and leave as ``(B, C, H, W)``; inside, tokens are ``(B, H*W, C)``. The 1x1 ``proj_in`` /
``proj_out`` convolutions are applied as matrix products on the token view, so a channels-last feature map goes
in and out without a copy; the result is returned in channels-last memory (same values, NCHW shape).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import checkpointed
from .attention import Attention
from .cpu_kernels import needs_graph, residual_add


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): ``proj`` maps ``dim_in -> 2 * dim_out``; output ``a * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(hidden_states).chunk(2, dim=-1)
        if needs_graph(hidden):
            return hidden * F.gelu(gate)
        return F.gelu(gate).mul_(hidden)  # one temporary fewer at inference


class GELU(nn.Module):
    """Linear then GELU (``approximate="tanh"`` for ``gelu-approximate``); key ``proj`` as in Diffusers."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states), approximate=self.approximate)


_FF_ACTIVATIONS = ("geglu", "gelu", "gelu-approximate")


class FeedForward(nn.Module):
    """``net = [activation-with-projection, Dropout, Linear(inner_dim, dim_out)]`` on ``(B, N, dim)`` tokens."""

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        mult: int = 4,
        dropout: float = 0.0,
        activation_fn: str = "geglu",
        final_dropout: bool = False,
        inner_dim: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        inner_dim = int(dim * mult) if inner_dim is None else inner_dim
        dim_out = dim if dim_out is None else dim_out
        if activation_fn == "geglu":
            act: nn.Module = GEGLU(dim, inner_dim, bias=bias)
        elif activation_fn in ("gelu", "gelu-approximate"):
            act = GELU(dim, inner_dim, approximate="tanh" if activation_fn == "gelu-approximate" else "none", bias=bias)
        else:
            raise ValueError(f"activation_fn={activation_fn!r} is not supported; use one of {_FF_ACTIVATIONS}")
        self.net = nn.ModuleList([act, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out, bias=bias)])
        if final_dropout:
            self.net.append(nn.Dropout(dropout))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block on ``(B, N, dim)`` tokens: ``x += attn1(norm1(x))``; ``x += attn2(norm2(x), ctx)``;
    ``x += ff(norm3(x))``.

    ``attn1`` is self-attention unless ``only_cross_attention`` (then it attends to the context as well);
    ``attn2`` exists when ``cross_attention_dim`` is given (cross-attention) or ``double_self_attention`` (a
    second self-attention).
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        dropout: float = 0.0,
        cross_attention_dim: int | None = None,
        activation_fn: str = "geglu",
        attention_bias: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        final_dropout: bool = False,
        ff_inner_dim: int | None = None,
        ff_bias: bool = True,
        attention_out_bias: bool = True,
    ) -> None:
        super().__init__()
        if only_cross_attention and cross_attention_dim is None:
            raise ValueError("only_cross_attention=True needs a cross_attention_dim (the context's feature size)")
        self.only_cross_attention = only_cross_attention

        def norm() -> nn.LayerNorm:
            return nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)

        def attention(context_dim: int | None) -> Attention:
            return Attention(
                query_dim=dim,
                heads=num_attention_heads,
                dim_head=attention_head_dim,
                dropout=dropout,
                bias=attention_bias,
                cross_attention_dim=context_dim,
                upcast_attention=upcast_attention,
                out_bias=attention_out_bias,
            )

        self.norm1 = norm()
        self.attn1 = attention(cross_attention_dim if only_cross_attention else None)
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = norm()
            self.attn2 = attention(None if double_self_attention else cross_attention_dim)
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = norm()
        self.ff = FeedForward(
            dim,
            dropout=dropout,
            activation_fn=activation_fn,
            final_dropout=final_dropout,
            inner_dim=ff_inner_dim,
            bias=ff_bias,
        )
        self._chunk_size: int | None = None
        self._chunk_dim = 0

    def set_chunk_feed_forward(self, chunk_size: int | None, dim: int = 0) -> None:
        """Run the feed-forward in chunks of ``chunk_size`` along ``dim`` (saves memory, same result)."""
        self._chunk_size = chunk_size
        self._chunk_dim = dim

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``hidden_states``: ``(B, N, dim)``; ``encoder_hidden_states``: ``(B, M, cross_attention_dim)``."""
        # Each sub-layer's output is a fresh tensor, so the residual is added into it in place at inference.
        context = encoder_hidden_states if self.only_cross_attention else None
        attn = self.attn1(self.norm1(hidden_states), encoder_hidden_states=context, attention_mask=attention_mask)
        hidden_states = residual_add(attn, hidden_states)
        if self.attn2 is not None:
            attn = self.attn2(
                self.norm2(hidden_states),
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
            )
            hidden_states = residual_add(attn, hidden_states)
        normed = self.norm3(hidden_states)
        if self._chunk_size is None:
            return residual_add(self.ff(normed), hidden_states)
        if normed.shape[self._chunk_dim] % self._chunk_size != 0:
            raise ValueError(
                f"chunk_size={self._chunk_size} must divide dimension {self._chunk_dim} of the tokens "
                f"({normed.shape[self._chunk_dim]})"
            )
        chunks = normed.split(self._chunk_size, dim=self._chunk_dim)
        return hidden_states + torch.cat([self.ff(c) for c in chunks], dim=self._chunk_dim)


def _projection(linear: bool, cin: int, cout: int) -> nn.Module:
    """``proj_in`` / ``proj_out``: an ``nn.Linear`` (``use_linear_projection``) or a 1x1 ``nn.Conv2d``."""
    return nn.Linear(cin, cout) if linear else nn.Conv2d(cin, cout, kernel_size=1)


def _as_linear_weight(layer: nn.Module) -> torch.Tensor:
    """The ``(out, in)`` matrix of an ``nn.Linear`` or of a 1x1 ``nn.Conv2d`` (a view, no copy)."""
    weight = layer.weight
    return weight if weight.ndim == 2 else weight.view(weight.shape[0], weight.shape[1])


def _project(layer: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``proj_in`` / ``proj_out`` on channels-last tokens ``(..., C)``: a plain layer as one matrix product; a layer
    wrapped by an adapter (peft's LoRA) is run as a module so the adapter takes part (a conv on an NCHW view)."""
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        return F.linear(tokens, _as_linear_weight(layer), layer.bias)
    if not isinstance(getattr(layer, "base_layer", None), nn.Conv2d):
        return layer(tokens)
    x = tokens.movedim(-1, 1)
    flat = x.ndim == 3
    out = layer(x.unsqueeze(-1) if flat else x)
    return (out.squeeze(-1) if flat else out).movedim(1, -1)


class Transformer2DModel(nn.Module):
    """Spatial transformer on a feature map: GroupNorm, ``proj_in``, ``num_layers`` transformer blocks,
    ``proj_out``, plus the input (residual).

    ``proj_in``/``proj_out`` are 1x1 convolutions, or ``nn.Linear`` with ``use_linear_projection`` (SD 2.x, SDXL):
    the keys differ, the math is the same. Input and output: ``(B, in_channels, H, W)``.
    """

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: int | None = None,
        out_channels: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        activation_fn: str = "geglu",
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if in_channels is None:
            raise ValueError("in_channels is required (only continuous feature-map input is supported)")
        if in_channels % norm_num_groups != 0:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide in_channels={in_channels}")
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.use_linear_projection = use_linear_projection
        inner_dim = num_attention_heads * attention_head_dim
        self.inner_dim = inner_dim
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        self.proj_in = _projection(use_linear_projection, in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                num_attention_heads,
                attention_head_dim,
                dropout=dropout,
                cross_attention_dim=cross_attention_dim,
                activation_fn=activation_fn,
                attention_bias=attention_bias,
                only_cross_attention=only_cross_attention,
                double_self_attention=double_self_attention,
                upcast_attention=upcast_attention,
                norm_elementwise_affine=norm_elementwise_affine,
                norm_eps=norm_eps,
            )
            for _ in range(num_layers)
        )
        self.proj_out = _projection(use_linear_projection, inner_dim, self.out_channels)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """``hidden_states`` ``(B, C, H, W)``; ``encoder_hidden_states`` ``(B, M, cross_attention_dim)``; masks are
        additive biases broadcastable to ``(B, 1, M)`` (or 0/1 ``(B, M)`` masks, converted here)."""
        attention_mask = _mask_to_bias(attention_mask, hidden_states.dtype)
        encoder_attention_mask = _mask_to_bias(encoder_attention_mask, hidden_states.dtype)
        batch, _, height, width = hidden_states.shape
        residual = hidden_states
        # (B, C, H, W) -> (B, H, W, C): free for channels-last input; F.linear handles the 1x1 conv as a matmul.
        tokens = self.norm(hidden_states).permute(0, 2, 3, 1)
        tokens = _project(self.proj_in, tokens)
        tokens = tokens.reshape(batch, height * width, self.inner_dim)
        for block in self.transformer_blocks:
            tokens = checkpointed(self, block, tokens, attention_mask, encoder_hidden_states, encoder_attention_mask)
        out = _project(self.proj_out, tokens)
        out = out.view(batch, height, width, self.out_channels).permute(0, 3, 1, 2)  # channels-last memory
        return residual_add(out, residual)


def _mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A ``(B, M)`` keep(1)/discard(0) mask -> additive ``(B, 1, M)`` bias (-10000 for discarded); others as given."""
    if mask is None or mask.ndim != 2:
        return mask
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)
