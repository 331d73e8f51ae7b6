"""``torchdiffusion serve``: AUTOMATIC1111's HTTP API (``/sdapi/v1/...``) and a web page for a pipeline folder.

Needs the ``serve`` extra (``pip install torchdiffusion[serve]``: FastAPI + uvicorn); ``import torchdiffusion``
never imports this package, and this package imports FastAPI only when one of its names is used.

>>> from torchdiffusion.serve import Engine, create_app
>>> app = create_app(Engine.load("path/to/sd-folder"), workers=2)   # any ASGI server can run it
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "create_app": "app",
    "default_model": "app",
    "serve": "app",
    "Engine": "engine",
    "Limits": "schemas",
    "JobQueue": "jobs",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
