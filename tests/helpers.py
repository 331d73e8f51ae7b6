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


def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Add seeded noise to EVERY parameter of ``module`` in place (norm weights and zero-initialised biases too), so
    parity on the result cannot hide a swapped, missing or mis-shaped affine; returns ``module``.

    Each tensor gets ``N(0, s^2)`` with ``s = scale * std(p)``, or ``s = scale`` where ``p`` is constant (norm
    weights of 1, biases of 0). Load the perturbed state dict into the other side so both see the same numbers.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            spread = p.float().std().item() if p.numel() > 1 else 0.0
            s = scale * spread if spread > 0 else scale
            p.add_((torch.randn(p.shape, generator=g) * s).to(p.dtype))
    return module


class _RunsCode:
    """Pickles as a call to ``exec``: unpickling it with plain pickle runs ``code``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        import builtins

        return builtins.exec, (self.code,)


def write_malicious_pickle(path, marker, tensors: dict | None = None) -> None:
    """``torch.save`` a checkpoint whose pickle, loaded without ``weights_only``, creates the file ``marker``
    (next to real-looking tensors, so only a loader that executes pickled code would notice anything)."""
    import os

    import torch

    payload = _RunsCode(f"open({os.fspath(marker)!r}, 'w').write('code ran')")
    torch.save({"state_dict": dict(tensors or {"w": torch.zeros(2)}), "hook": payload}, os.fspath(path))
