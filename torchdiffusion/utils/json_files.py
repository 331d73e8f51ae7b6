"""Reading JSON files that hold one object (configs, ``model_index.json``, shard indexes). Imports nothing from
the package, so every loader can use it."""

from __future__ import annotations

import json
import os
from typing import Any


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object from ``path``; a broken file gives an error that names it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)} must hold a JSON object, got {type(data).__name__}")
    return data
