"""Where files come from: a local folder or a Hugging Face Hub id, one file at a time.

Only the files a loader asks for are fetched (never a whole repository). ``HF_HUB_OFFLINE=1`` and
``local_files_only=True`` read the local cache only. Names that come from files (shard indexes,
``model_index.json``) must be plain names that stay inside the model folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from .pretrained import resolve_embedded

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


def _hub_cache_blobs(folder: str) -> str | None:
    """The ``blobs`` folder of the Hub cache repo whose snapshot holds ``folder`` (a real path), else None."""
    head = folder
    while True:
        parent = os.path.dirname(head)
        if parent == head:
            return None
        repo = os.path.dirname(parent)
        if os.path.basename(parent) == "snapshots" and os.path.basename(repo).startswith("models--"):
            return os.path.join(repo, "blobs")
        head = parent


def check_inside(path: str, folder: str) -> None:
    """``ValueError`` naming ``path`` when it resolves (through links) to a file outside ``folder``; links of a
    Hub cache snapshot into its repo's ``blobs`` folder are allowed."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    for allowed in (root, _hub_cache_blobs(root)):
        if allowed is not None and os.path.commonpath([real, allowed]) == allowed:
            return
    raise ValueError(f"{path} is a link to {real}, outside the model folder {folder}: refusing to read it")


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
    local = os.fspath(resolve_embedded(path_or_id))  # the embedded model's name -> its folder in the package
    if os.path.isdir(local):
        path = os.path.join(local, subfolder, filename) if subfolder else os.path.join(local, filename)
        if not os.path.isfile(path):
            return None
        check_inside(path, local)
        return path
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


# ---- uploading ---------------------------------------------------------------------------------------------
# Keyword arguments that ``save_pretrained(..., push_to_hub=True, ...)`` / ``save_config`` take for the upload.
PUSH_KWARGS = frozenset({"repo_id", "commit_message", "private", "token", "create_pr", "subfolder"})


def check_repo_id(repo_id: Any, name: str = "repo_id") -> str:
    """Return ``repo_id`` if it looks like a Hub repository id (``"name"`` or ``"owner/name"``); else a ValueError
    naming the argument ``name``."""
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ValueError(f"{name} must be a non-empty Hub repository id such as 'you/my-model', got {repo_id!r}")
    parts = repo_id.split("/")
    if len(parts) > 2 or any(not _PLAIN_NAME.match(p) or ".." in p for p in parts):
        raise ValueError(f"{name} must be 'name' or 'owner/name' (letters, digits, '-', '_', '.'), got {repo_id!r}")
    return repo_id


def split_push_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``kwargs`` into (upload options from :data:`PUSH_KWARGS`, the rest)."""
    push = {k: v for k, v in kwargs.items() if k in PUSH_KWARGS}
    rest = {k: v for k, v in kwargs.items() if k not in PUSH_KWARGS}
    return push, rest


def _describe(source: Any) -> tuple[str, str]:
    """(class name, ``"pipeline"`` or ``"model"``) of what was saved; a pipeline is what writes ``model_index.json``."""
    if source is None:
        return "folder", "model"
    kind = "pipeline" if getattr(source, "config_name", None) == "model_index.json" else "model"
    return type(source).__name__, kind


def _default_commit_message(source: Any) -> str:
    name = _describe(source)[0]
    if "Model" in name:
        return "Upload model"
    if "Scheduler" in name:
        return "Upload scheduler"
    return f"Upload {name}"


def model_card_text(repo_id: str, source: Any) -> str:
    """A minimal ``README.md`` for a pushed folder: YAML metadata (``library_name: diffusers``) and one line.

    ``source`` is the saved model, scheduler or pipeline (its class name goes into the text). The folder is in
    Diffusers' format, so the Hub shows Diffusers' loading snippet; torchdiffusion loads it too.
    """
    name, what = _describe(source)
    return (
        "---\nlibrary_name: diffusers\ntags:\n- torchdiffusion\n---\n\n"
        f"# {repo_id.split('/')[-1]}\n\n"
        f"A diffusers-format {what} ({name}) pushed to the Hub with torchdiffusion. "
        "This model card was written automatically.\n"
    )


def upload_saved_folder(
    source: Any,
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    subfolder: str | None = None,
    model_card: bool = True,
    api: Any = None,
) -> Any:
    """Create ``repo_id`` if needed and upload every file of ``folder`` (what ``source`` saved) to it.

    ``source``: the saved model, scheduler or pipeline; its class names the default commit message and the model
    card. ``model_card``: write a ``README.md`` into ``folder`` first when the repository has none yet (never when
    uploading into a ``subfolder``). Returns huggingface_hub's ``CommitInfo`` (a ``str``: the commit URL).
    """
    check_repo_id(repo_id)
    subfolder = check_subfolder(subfolder, "subfolder")
    if api is None:
        import huggingface_hub

        api = huggingface_hub.HfApi()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    card = os.path.join(os.fspath(folder), "README.md")
    if model_card and subfolder is None and not os.path.exists(card):
        if not api.file_exists(repo_id, "README.md", token=token):
            with open(card, "w", encoding="utf-8") as f:
                f.write(model_card_text(repo_id, source))
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=os.fspath(folder),
        path_in_repo=subfolder,
        commit_message=commit_message if commit_message is not None else _default_commit_message(source),
        token=token,
        create_pr=create_pr,
    )


def push_to_hub(
    save: Callable[[str], Any],
    repo_id: str,
    *,
    source: Any = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    subfolder: str | None = None,
) -> Any:
    """Call ``save(folder)`` on a temporary folder, then upload that folder to ``repo_id`` (created if needed).

    ``save`` writes the files, e.g. ``lambda folder: model.save_pretrained(folder)``; ``source`` is the object
    saved (its class names the model card and the default commit message). The other arguments are those of
    Diffusers' ``push_to_hub``. Returns huggingface_hub's ``CommitInfo``. Models, schedulers and pipelines call
    this from their own ``push_to_hub`` method.
    """
    import tempfile

    if not callable(save):
        raise TypeError(f"save must be a callable save(folder), got {type(save).__name__}")
    check_repo_id(repo_id)
    check_subfolder(subfolder, "subfolder")
    import huggingface_hub

    api = huggingface_hub.HfApi()
    with tempfile.TemporaryDirectory() as tmp:
        save(tmp)
        return upload_saved_folder(
            source,
            tmp,
            repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            create_pr=create_pr,
            subfolder=subfolder,
            model_card=True,
            api=api,
        )
