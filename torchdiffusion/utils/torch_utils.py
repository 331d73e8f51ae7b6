"""Small tensor helpers shared across the package: reproducible noise, device/dtype checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def check_generator(generator: GeneratorArg, batch_size: int, name: str = "generator") -> None:
    """Raise ``ValueError``/``TypeError`` unless ``generator`` is None, one Generator, or one per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(
                f"{name} is a list of {len(generator)} generators but the batch has {batch_size} samples; "
                f"pass one generator or exactly {batch_size}"
            )
        for g in generator:
            if not isinstance(g, torch.Generator):
                raise TypeError(f"{name} list must hold torch.Generator objects, got {type(g).__name__}")
        return
    raise TypeError(f"{name} must be a torch.Generator, a list of them, or None; got {type(generator).__name__}")


def randn_tensor(
    shape: Sequence[int],
    generator: GeneratorArg = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape``, drawn reproducibly.

    Noise is drawn on the generator's device (the CPU for CPU generators) in float32 and then moved to
    ``device``/``dtype``, so a seed gives the same numbers on any device. With a list of generators, sample
    ``i`` of the batch (``shape[0]``) is drawn from ``generator[i]``: the same seed gives the same sample alone
    or in a batch.
    """
    shape = tuple(int(s) for s in shape)
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or torch.float32
    if isinstance(generator, (list, tuple)):
        check_generator(generator, shape[0])
        parts = [_draw((1, *shape[1:]), g) for g in generator]
        noise = torch.cat(parts, dim=0)
    else:
        check_generator(generator, shape[0] if shape else 1)
        noise = _draw(shape, generator)
    return noise.to(device=device, dtype=dtype)


def _draw(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
