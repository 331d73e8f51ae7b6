"""Exponential moving average of model weights (the weights a trained diffusion model is usually sampled with).

``EMAModel`` follows the arguments and decay rule of Diffusers' ``training_utils.EMAModel``:

* no warm-up: ``decay_k = min(decay, (1 + k) / (10 + k))``
* ``use_ema_warmup``: ``decay_k = min(decay, 1 - (1 + k / inv_gamma) ** -power)`` (``power`` 2/3 or 3/4 are
  the usual choices for long / short runs)

where ``k = optimization_step - update_after_step - 1`` (decay 0, i.e. a plain copy, while ``k <= 0``), then
clamped below by ``min_decay``. Each ``step`` does ``shadow <- shadow - (1 - decay_k) (shadow - param)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch


def _check_unit_interval(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class EMAModel:
    """Shadow copies of ``parameters`` updated by :meth:`step` after every optimizer step.

    ``parameters``: an iterable of tensors or an ``nn.Module`` (its parameters). Shadows are float32 copies
    on the parameters' device (``foreach`` kernels update them all at once).
    """

    def __init__(
        self,
        parameters: Iterable[torch.Tensor] | torch.nn.Module,
        decay: float = 0.9999,
        min_decay: float = 0.0,
        update_after_step: int = 0,
        use_ema_warmup: bool = False,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
    ) -> None:
        self.decay = _check_unit_interval(decay, "decay")
        self.min_decay = _check_unit_interval(min_decay, "min_decay")
        if isinstance(update_after_step, bool) or not isinstance(update_after_step, int) or update_after_step < 0:
            raise ValueError(f"update_after_step must be an int >= 0, got {update_after_step!r}")
        for name, value in (("inv_gamma", inv_gamma), ("power", power)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.update_after_step, self.use_ema_warmup = update_after_step, bool(use_ema_warmup)
        self.inv_gamma, self.power = float(inv_gamma), float(power)
        params = list(parameters.parameters() if isinstance(parameters, torch.nn.Module) else parameters)
        self.shadow_params = [p.detach().float().clone() for p in params]
        self.optimization_step = 0
        self.cur_decay_value: float | None = None
        self._stored: list[torch.Tensor] | None = None

    def get_decay(self, optimization_step: int) -> float:
        """The decay used at ``optimization_step`` (1-based count of ``step`` calls)."""
        k = max(0, optimization_step - self.update_after_step - 1)
        if k <= 0:
            return 0.0
        if self.use_ema_warmup:
            value = 1 - (1 + k / self.inv_gamma) ** -self.power
        else:
            value = (1 + k) / (10 + k)
        return max(min(value, self.decay), self.min_decay)

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.Tensor] | torch.nn.Module) -> None:
        """Move the shadows towards ``parameters`` (those without ``requires_grad`` are copied)."""
        params = list(parameters.parameters() if isinstance(parameters, torch.nn.Module) else parameters)
        if len(params) != len(self.shadow_params):
            raise ValueError(f"parameters has {len(params)} tensors but the EMA holds {len(self.shadow_params)}")
        self.optimization_step += 1
        decay = self.get_decay(self.optimization_step)
        self.cur_decay_value = decay
        trained = [(s, p) for s, p in zip(self.shadow_params, params) if p.requires_grad]
        frozen = [(s, p) for s, p in zip(self.shadow_params, params) if not p.requires_grad]
        if trained:
            shadows = [s for s, _ in trained]
            values = [p.detach().to(s.dtype) for s, p in trained]
            torch._foreach_lerp_(shadows, values, 1.0 - decay)
        for s, p in frozen:
            s.copy_(p.detach())

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.Tensor] | torch.nn.Module) -> None:
        """Write the averaged weights into ``parameters`` (cast to their dtype)."""
        params = list(parameters.parameters() if isinstance(parameters, torch.nn.Module) else parameters)
        for s, p in zip(self.shadow_params, params, strict=True):
            p.copy_(s.to(p.dtype))

    def store(self, parameters: Iterable[torch.Tensor] | torch.nn.Module) -> None:
        """Keep a copy of ``parameters`` so :meth:`restore` can put them back after sampling with the EMA."""
        params = parameters.parameters() if isinstance(parameters, torch.nn.Module) else parameters
        self._stored = [p.detach().clone() for p in params]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor] | torch.nn.Module) -> None:
        """Put back what :meth:`store` kept."""
        if self._stored is None:
            raise RuntimeError("restore() called without a previous store()")
        params = parameters.parameters() if isinstance(parameters, torch.nn.Module) else parameters
        for s, p in zip(self._stored, params, strict=True):
            p.copy_(s)
        self._stored = None

    @contextlib.contextmanager
    def average_parameters(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """``with ema.average_parameters(model): ...`` runs with the EMA weights in ``model``, then restores."""
        self.store(model)
        self.copy_to(model)
        try:
            yield model
        finally:
            self.restore(model)

    def to(self, device: torch.device | str | None = None) -> EMAModel:
        self.shadow_params = [s.to(device) for s in self.shadow_params]
        return self

    def state_dict(self) -> dict[str, Any]:
        """Settings, step count and shadow tensors (``shadow_params``: a list in parameter order)."""
        return {
            "decay": self.decay,
            "min_decay": self.min_decay,
            "optimization_step": self.optimization_step,
            "update_after_step": self.update_after_step,
            "use_ema_warmup": self.use_ema_warmup,
            "inv_gamma": self.inv_gamma,
            "power": self.power,
            "shadow_params": self.shadow_params,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (shadow shapes must match)."""
        shadows = state.get("shadow_params")
        if shadows is not None:
            if len(shadows) != len(self.shadow_params):
                raise ValueError(f"state has {len(shadows)} shadow tensors, this EMA {len(self.shadow_params)}")
            for mine, theirs in zip(self.shadow_params, shadows):
                if mine.shape != theirs.shape:
                    raise ValueError(f"shadow shape {tuple(theirs.shape)} does not match {tuple(mine.shape)}")
            self.shadow_params = [
                t.to(device=m.device, dtype=torch.float32).clone() for m, t in zip(self.shadow_params, shadows)
            ]
        for key in ("decay", "min_decay", "inv_gamma", "power"):
            if key in state:
                setattr(self, key, float(state[key]))
        for key in ("optimization_step", "update_after_step"):
            if key in state:
                setattr(self, key, int(state[key]))
        if "use_ema_warmup" in state:
            self.use_ema_warmup = bool(state["use_ema_warmup"])
