"""Training checkpoints that a crash can never leave half-written.

A checkpoint ``ROOT/checkpoint-000500`` is written as ``ROOT/.checkpoint-000500.tmp-PID``: every file is
written and fsync'ed, then ``checkpoint.json`` (step + the size of every file) is written LAST as the
completeness marker, then the folder is renamed into place. A folder counts as a checkpoint only if its marker
parses and every listed file has its listed size, so a process killed at any moment leaves the previous
complete checkpoint as the latest. Old checkpoints are pruned only after the new one is complete.

Files: ``model.safetensors`` (training weights), ``ema.safetensors``, ``optimizer.pt`` (read back with
``torch.load(weights_only=True)``), ``random_states.safetensors`` + ``trainer_state.json`` (step, LR schedule,
grad scaler, Python/numpy RNG states, loss history).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import torch

PREFIX = "checkpoint-"
MARKER = "checkpoint.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_file(folder: str, name: str, write) -> None:
    """Write one file of a checkpoint with ``write(path)`` and flush it to disk."""
    path = os.path.join(folder, name)
    write(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def _write_safetensors(tensors: dict[str, torch.Tensor]):
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return lambda path: save_file(clean, path)


def is_complete(folder: str) -> bool:
    """True if ``folder`` holds a marker whose listed files all exist with their recorded sizes."""
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
        files = marker["files"]
        return isinstance(files, dict) and all(
            os.path.getsize(os.path.join(folder, name)) == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, str]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _NAME.match(name)
        path = os.path.join(root, name)
        if match and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> str | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def save_checkpoint(root: str | os.PathLike, step: int, state: dict[str, Any], keep_last: int | None = None) -> str:
    """Write ``state`` as checkpoint ``step`` under ``root`` atomically; keep the newest ``keep_last`` (None: all).

    ``state`` keys: ``model`` and ``ema`` (name -> tensor), ``optimizer`` (an optimizer ``state_dict``),
    ``random_states`` (name -> tensor), ``trainer`` (JSON-able dict). Returns the checkpoint's path.
    """
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, checkpoint_name(step))
    tmp = os.path.join(root, f".{checkpoint_name(step)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    writers = {}
    for key in ("model", "ema", "random_states"):
        if state.get(key) is not None:
            writers[f"{key}.safetensors"] = _write_safetensors(state[key])
    if state.get("optimizer") is not None:
        optimizer_state = state["optimizer"]
        writers["optimizer.pt"] = lambda path: torch.save(optimizer_state, path)
    trainer_state = dict(state.get("trainer") or {}, step=step)
    writers["trainer_state.json"] = lambda path: _write_json(path, trainer_state)
    for name, write in writers.items():
        _write_file(tmp, name, write)
    sizes = {name: os.path.getsize(os.path.join(tmp, name)) for name in writers}
    _write_file(tmp, MARKER, lambda path: _write_json(path, {"step": step, "files": sizes}))
    _fsync_dir(tmp)
    if os.path.exists(final):  # the same step written by an earlier run: move it aside, then drop it
        trash = os.path.join(root, f".{checkpoint_name(step)}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    prune_checkpoints(root, keep_last)
    return final


def prune_checkpoints(root: str, keep_last: int | None) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and leftovers of interrupted writes."""
    for name in os.listdir(root):
        if name.startswith(f".{PREFIX}") and (".tmp-" in name or ".old-" in name):
            pid = name.rsplit("-", 1)[-1]
            if pid != str(os.getpid()) or ".old-" in name:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if keep_last is None:
        return
    complete = list_checkpoints(root)
    for _, path in complete[: max(0, len(complete) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(folder: str | os.PathLike) -> dict[str, Any]:
    """Read what :func:`save_checkpoint` wrote (``ValueError`` naming the folder if it is not complete)."""
    from safetensors.torch import load_file

    folder = os.fspath(folder)
    if not is_complete(folder):
        raise ValueError(f"checkpoint {folder!r} is missing or incomplete (no valid {MARKER})")
    state: dict[str, Any] = {}
    for key in ("model", "ema", "random_states"):
        path = os.path.join(folder, f"{key}.safetensors")
        state[key] = load_file(path) if os.path.exists(path) else None
    path = os.path.join(folder, "optimizer.pt")
    state["optimizer"] = torch.load(path, map_location="cpu", weights_only=True) if os.path.exists(path) else None
    with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
        state["trainer"] = json.load(f)
    return state


def resolve_resume(resume: str | os.PathLike | None, root: str | os.PathLike) -> str | None:
    """``resume``: None (start fresh), ``"latest"`` (newest complete checkpoint in ``root``, or None when there is
    none yet), or a checkpoint folder path."""
    if resume is None:
        return None
    resume = os.fspath(resume)
    if resume == "latest":
        return latest_checkpoint(root)
    if not is_complete(resume):
        raise ValueError(f"resume_from_checkpoint={resume!r} is not a complete checkpoint folder (or 'latest')")
    return resume
