"""Activation functions by name, as Diffusers' configs spell them (``act_fn="silu"``)."""

from __future__ import annotations

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


def get_activation(act_fn: str) -> nn.Module:
    """A fresh activation module for ``act_fn`` (case-insensitive): swish/silu, mish, gelu or relu."""
    if not isinstance(act_fn, str) or act_fn.lower() not in ACTIVATIONS:
        raise ValueError(f"act_fn={act_fn!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[act_fn.lower()]()
