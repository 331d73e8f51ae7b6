"""Small CPU-friendly kernels shared by the layers, each numerically the same op as its plain PyTorch spelling.

* :func:`conv2d` runs an ``nn.Conv2d`` with its weight in the input's memory format, so a channels-last feature
  map reaches oneDNN's NHWC kernels without a per-call layout reorder of the input (weights stay NCHW in the
  state dict; the reordered copy is tiny next to the convolution).
* :func:`group_norm_act` is GroupNorm then an activation, the activation applied in place when no autograd
  graph is recorded (one feature-map allocation fewer).
* :func:`use_channels_last` says whether a model should carry its feature maps channels-last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CL = torch.channels_last


def is_channels_last(x: torch.Tensor) -> bool:
    """True when a 4-D tensor is laid out NHWC (and is not also plain contiguous, as when C == 1 or H == W == 1)."""
    return x.ndim == 4 and x.is_contiguous(memory_format=_CL) and not x.is_contiguous()


def use_channels_last(x: torch.Tensor) -> bool:
    """The default layout policy: channels-last feature maps on the CPU (oneDNN's fastest convolution path)."""
    return x.device.type == "cpu" and x.ndim == 4


def conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` with the weight matched to ``x``'s memory format (same values, faster NHWC path on CPU)."""
    if conv.padding_mode != "zeros":
        return conv(x)
    weight = conv.weight
    if is_channels_last(x) and weight.shape[-1] * weight.shape[-2] > 1:
        weight = weight.contiguous(memory_format=_CL)
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def needs_graph(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records ops on any of ``tensors`` (then in-place shortcuts are off)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def group_norm_act(x: torch.Tensor, norm: nn.GroupNorm, act: nn.Module | None) -> torch.Tensor:
    """``act(norm(x))``; SiLU runs in place on the normalised copy when no graph is being recorded."""
    out = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    if act is None:
        return out
    if type(act) is nn.SiLU and not needs_graph(x, norm.weight, norm.bias):
        return F.silu(out, inplace=True)
    return act(out)


def residual_add(x: torch.Tensor, residual: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``(x + residual) / scale`` (``residual`` may broadcast), reusing ``x``'s memory when no graph is recorded
    (``x`` must be a temporary the caller owns)."""
    inplace_ok = x.dtype == residual.dtype and torch.broadcast_shapes(x.shape, residual.shape) == x.shape
    if not inplace_ok or needs_graph(x, residual):
        out = x + residual
        return out / scale if scale != 1 else out
    out = x.add_(residual)
    return out.div_(scale) if scale != 1 else out


def _contiguous_state_dict(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[key] = value.contiguous()


def channels_last_conv_weights_(model: nn.Module) -> nn.Module:
    """Store ``model``'s k x k (k > 1) Conv2d weights channels-last, in place (same values), so that :func:`conv2d`
    on channels-last maps skips its per-call weight reorder (measured: ~10% of an SD UNet forward on CPU).
    ``model.state_dict()`` still returns plain contiguous tensors (safetensors needs them)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.weight.shape[-1] * module.weight.shape[-2] > 1:
            module.weight.data = module.weight.data.contiguous(memory_format=_CL)
    if not getattr(model, "_contiguous_state_dict_hook", False):
        model._register_state_dict_hook(_contiguous_state_dict)
        model._contiguous_state_dict_hook = True
    return model
