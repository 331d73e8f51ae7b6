"""Tiny test-only models shared by the tests."""

from __future__ import annotations

from torch import nn

from torchdiffusion.configuration import ConfigMixin, register_to_config
from torchdiffusion.models.modeling import ModelMixin


class TinyModel(ModelMixin, ConfigMixin):
    """Two linear layers and an attention-like submodule with current key names."""

    _legacy_key_renames = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

    @register_to_config
    def __init__(self, width: int = 4, depth: int = 2, act_fn: str = "silu"):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.attn = nn.Module()
        self.attn.to_q = nn.Linear(width, width)
        self.attn.to_out = nn.ModuleList([nn.Linear(width, width)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.attn.to_out[0](self.attn.to_q(x))
