"""Where files come from: a local folder or a Hugging Face Hub id, one file at a time.

Only the files a loader asks for are fetched (never a whole repository). ``HF_HUB_OFFLINE=1`` and
``local_files_only=True`` read the local cache only. Names that come from files (shard indexes,
``model_index.json``) must be plain names that stay inside the model folder.
"""

from __future__ import annotations

import os
import re
from typing import Any

HUB_KWARGS = frozenset({"revision", "local_files_only", "cache_dir", "token", "force_download", "proxies"})

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def check_plain_name(name: Any, what: str) -> str:
    """Return ``name`` if it is a plain file/folder name (no separators, no ``..``); else ``ValueError``.

    ``what`` names where the value came from (e.g. ``"shard file in model.safetensors.index.json"``).
    """
    if not isinstance(name, str) or not _PLAIN_NAME.match(name) or name in (".", "..") or ".." in name:
        raise ValueError(f"{what} must be a plain name inside the model folder, got {name!r}")
    return name


def check_subfolder(subfolder: Any, what: str = "subfolder") -> str | None:
    """A relative path of plain names (``"unet"``, ``"a/b"``), or None."""
    if subfolder is None or subfolder == "":
        return None
    if not isinstance(subfolder, str):
        raise TypeError(f"{what} must be a string or None, got {type(subfolder).__name__}")
    for part in subfolder.replace("\\", "/").split("/"):
        check_plain_name(part, what)
    return subfolder.replace("\\", "/")


def is_local(path_or_id: str | os.PathLike) -> bool:
    return os.path.isdir(os.fspath(path_or_id))


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def resolve_file(
    path_or_id: str | os.PathLike,
    filename: str,
    subfolder: str | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    proxies: dict | None = None,
) -> str:
    """Local path of ``filename`` (inside ``subfolder``) of a folder or Hub repo; ``FileNotFoundError`` if absent."""
    found = try_resolve_file(
        path_or_id, filename, subfolder, revision, local_files_only, cache_dir, token, force_download, proxies
    )
    if found is None:
        where = os.fspath(path_or_id) + (f"/{subfolder}" if subfolder else "")
        raise FileNotFoundError(f"{filename} not found in {where}")
    return found


def try_resolve_file(
    path_or_id: str | os.PathLike,
    filename: str,
    subfolder: str | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    proxies: dict | None = None,
) -> str | None:
    """Like :func:`resolve_file` but returns None when the repository has no such file.

    Other failures (no network, no such repository, not in the offline cache) raise ``OSError`` with a
    message that names the file and what to do.
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(
            f"pretrained_model_name_or_path must be a folder path or a Hub id string, got {type(path_or_id).__name__}"
        )
    check_plain_name(filename, "filename")
    subfolder = check_subfolder(subfolder)
    local = os.fspath(path_or_id)
    if os.path.isdir(local):
        path = os.path.join(local, subfolder, filename) if subfolder else os.path.join(local, filename)
        return path if os.path.isfile(path) else None
    if os.path.exists(local) or local.startswith((".", "/", "~")) or local.count("/") > 1:
        raise FileNotFoundError(f"pretrained_model_name_or_path={local!r} is neither a folder nor a Hub repo id")

    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return huggingface_hub.hf_hub_download(
            local,
            filename,
            subfolder=subfolder,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
            proxies=proxies,
            local_files_only=_offline(local_files_only),
        )
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError as e:
        raise OSError(f"{local!r} is not a local folder and not a Hub repository you can access") from e
    except LocalEntryNotFoundError as e:
        if _offline(local_files_only):
            # Offline: a file missing from the cache may simply not exist in the repo; let the caller try
            # the next candidate and fail with the full list if none is cached.
            return None
        raise OSError(
            f"could not fetch {filename!r} from {local!r} (no connection?). "
            "Set HF_HUB_OFFLINE=1 to use the cache only, or pass a local folder."
        ) from e
    except (OSError, ValueError) as e:
        raise OSError(f"could not fetch {filename!r} from {local!r}: {e}") from e
