"""Configuration: constructor arguments <-> ``config.json``.

A class that inherits :class:`ConfigMixin` and decorates its ``__init__`` with :func:`register_to_config`
records every constructor argument (defaults included) in ``self.config``. The config is saved as JSON with
``_class_name`` and ``_diffusers_version`` (the format Diffusers reads and writes), and
``Cls.from_config(config, **overrides)`` rebuilds the object. Keys the target class does not take are kept as
*hidden* config, so swapping schedulers back and forth with ``from_config`` loses nothing.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .hub import HUB_KWARGS, resolve_file, split_push_kwargs, upload_saved_folder
from .hub import push_to_hub as _push_folder
from .utils.json_files import read_json

# The Diffusers release whose folder format we write. Diffusers applies compatibility fixes to configs
# written by old releases, so we claim the release we were checked against, not our own version number.
DIFFUSERS_FORMAT_VERSION = "0.42.1"

# Keys that live in memory only and are never written to JSON.
_TRANSIENT_KEYS = ("_use_default_values", "_ignore_files", "_name_or_path")


class FrozenDict(OrderedDict):
    """A read-only dict whose keys can also be read as attributes (``config.num_train_timesteps``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__frozen = True

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} is read-only; build a new object with from_config(..., key=value)")

    __delitem__ = setdefault = pop = popitem = update = _refuse  # type: ignore[assignment]

    def __setitem__(self, key: str, value: Any) -> None:
        if getattr(self, "_FrozenDict__frozen", False):
            self._refuse()
        super().__setitem__(key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_FrozenDict__frozen", False):
            self._refuse()
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __reduce__(self):  # copy/deepcopy/pickle build a plain-constructed FrozenDict
        return (type(self), (list(self.items()),))


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def init_keys(cls: type) -> set[str]:
    """Names of the keyword arguments ``cls.__init__`` takes (``self`` and ``**kwargs`` excluded)."""
    params = inspect.signature(cls.__init__).parameters
    return {
        name
        for name, p in params.items()
        if name != "self" and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }


class ConfigMixin:
    """Base class for everything that has a config: models, schedulers, pipelines.

    Subclasses set ``config_name`` (the JSON file name) and decorate ``__init__`` with
    :func:`register_to_config`.
    """

    config_name: str | None = None
    ignore_for_config: list[str] = []
    has_compatibles: bool = False
    _compatibles: list[str] = []

    # ---- recording -------------------------------------------------------------------------------------
    def register_to_config(self, **kwargs: Any) -> None:
        """Add or overwrite config entries (used by the decorator and for hidden keys)."""
        if self.config_name is None:
            raise NotImplementedError(f"{type(self).__name__} must define `config_name`")
        current = dict(getattr(self, "_internal_dict", {}))
        current.update(kwargs)
        # Bypass nn.Module.__setattr__ bookkeeping: this is plain data.
        object.__setattr__(self, "_internal_dict", FrozenDict(current))

    @property
    def config(self) -> FrozenDict:
        """The recorded constructor arguments (plus hidden keys), read-only."""
        return self._internal_dict

    def __getattr__(self, name: str) -> Any:
        # Diffusers lets `scheduler.num_train_timesteps` read the config; it warns but works. Keep it working
        # for reads of config keys that are not real attributes.
        internal = self.__dict__.get("_internal_dict")
        if internal is not None and name in internal and not name.startswith("_"):
            return internal[name]
        parent = super()
        if hasattr(parent, "__getattr__"):
            return parent.__getattr__(name)  # nn.Module parameters/buffers/submodules
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---- JSON ------------------------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        """The config as written to disk: ``_class_name``, ``_diffusers_version`` and every key.

        As in Diffusers, writing the config (``save_config``, ``save_pretrained``, ``repr``) also records
        ``_class_name`` and ``_diffusers_version`` in the in-memory config (a new object has neither), so the config
        of a saved object equals the config loaded back (less ``_use_default_values`` / ``_name_or_path``).
        """
        self._record_identity()
        out: dict[str, Any] = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_FORMAT_VERSION}
        for key, value in self.config.items():
            if key in _TRANSIENT_KEYS or key in ("_class_name", "_diffusers_version"):
                continue
            out[key] = _json_value(value)
        return out

    def _record_identity(self) -> None:
        config = self.__dict__.get("_internal_dict")
        if config is not None:  # in place: a reference to the config taken earlier sees the keys too
            OrderedDict.__setitem__(config, "_class_name", type(self).__name__)
            OrderedDict.__setitem__(config, "_diffusers_version", DIFFUSERS_FORMAT_VERSION)

    def to_json_string(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json_string(), encoding="utf-8")

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``<save_directory>/<config_name>``, creating the folder if needed.

        ``push_to_hub=True`` then uploads the folder; ``kwargs`` are the upload options (``repo_id``, default the
        folder's name, ``commit_message``, ``private``, ``token``, ``create_pr``, ``subfolder``).
        """
        push, _ = split_push_kwargs(kwargs)  # other keywords are ignored, as in Diffusers
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={str(save_directory)!r} is a file; it must be a folder")
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, self.config_name))
        if push_to_hub:
            push.setdefault("repo_id", os.path.basename(os.path.normpath(os.fspath(save_directory))))
            upload_saved_folder(self, save_directory, model_card=False, **push)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
    ) -> Any:
        """Save this model, scheduler or pipeline to a temporary folder and upload it to the Hub repo ``repo_id``
        (created if needed; a ``README.md`` model card is added when the repo has none). Returns the commit
        info (a ``str``: the commit URL). ``safe_serialization`` and ``variant`` apply to model weights
        (schedulers have none). See :func:`torchdiffusion.hub.push_to_hub`."""
        if not isinstance(safe_serialization, bool):
            raise TypeError(f"safe_serialization must be a bool, got {type(safe_serialization).__name__}")
        return _push_folder(
            lambda folder: self._save_for_hub(folder, safe_serialization=safe_serialization, variant=variant),
            repo_id,
            source=self,
            commit_message=commit_message,
            private=private,
            token=token,
            create_pr=create_pr,
            subfolder=subfolder,
        )

    def _save_for_hub(self, folder: str, safe_serialization: bool = True, variant: str | None = None) -> None:
        """Write what :meth:`push_to_hub` uploads into ``folder`` (models and pipelines pass the weight options)."""
        save = getattr(self, "save_pretrained", None)
        if save is not None:
            save(folder)
        else:
            self.save_config(folder)

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    # ---- loading ---------------------------------------------------------------------------------------
    @classmethod
    def load_config(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | dict,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **hub_kwargs: Any,
    ) -> dict[str, Any] | tuple[dict[str, Any], dict[str, Any]]:
        """Read ``config_name`` from a local folder or a Hub id (``subfolder`` inside it) as a plain dict."""
        if isinstance(pretrained_model_name_or_path, dict):
            config = dict(pretrained_model_name_or_path)
            return (config, hub_kwargs) if return_unused_kwargs else config
        if cls.config_name is None:
            raise NotImplementedError(f"{cls.__name__} must define `config_name`")
        fetch_kwargs = {k: v for k, v in hub_kwargs.items() if k in HUB_KWARGS}
        unused = {k: v for k, v in hub_kwargs.items() if k not in HUB_KWARGS}
        path = resolve_file(pretrained_model_name_or_path, cls.config_name, subfolder=subfolder, **fetch_kwargs)
        config = read_json(path)
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def extract_init_dict(cls, config: dict[str, Any], **kwargs: Any) -> tuple[dict, dict, dict]:
        """Split a config into (constructor args, unused kwargs, hidden config)."""
        defaulted = set(config.get("_use_default_values", []))
        config = {k: v for k, v in config.items() if k not in defaulted and k != "_use_default_values"}
        original = dict(config)
        expected = init_keys(cls) - set(cls.ignore_for_config)

        # Keys that only a compatible class (or the class the config was written for) understands stay hidden.
        foreign: set[str] = set()
        for other in cls._compatible_classes():
            foreign |= init_keys(other)
        source = config.get("_class_name")
        if isinstance(source, str) and source != cls.__name__:
            source_cls = _lookup_class(source)
            if source_cls is not None:
                foreign |= init_keys(source_cls)
        foreign -= expected

        init: dict[str, Any] = {}
        for key in expected:
            if key in kwargs:
                init[key] = kwargs.pop(key)
            elif key in config and key not in foreign:
                init[key] = config[key]
        unused = {k: v for k, v in config.items() if k not in init and not k.startswith("_") and k not in foreign}
        unused.update(kwargs)
        hidden = {k: v for k, v in original.items() if k not in init}
        return init, unused, hidden

    @classmethod
    def _compatible_classes(cls) -> list[type]:
        if not cls.has_compatibles:
            return []
        found = [_lookup_class(name) for name in cls._compatibles]
        return [c for c in found if c is not None and c is not cls]

    @property
    def compatibles(self) -> list[type]:
        """Classes whose configs this one can be built from (and back) without losing anything."""
        return self._compatible_classes()

    @classmethod
    def from_config(
        cls, config: dict[str, Any] | FrozenDict | None = None, return_unused_kwargs: bool = False, **kwargs: Any
    ):
        """Build an instance from a config dict (e.g. ``other.config``); ``kwargs`` override config values."""
        if config is None:
            raise ValueError("config is required: pass a dict such as `other_object.config`")
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict (e.g. `scheduler.config`), got {type(config).__name__}")
        init, unused, hidden = cls.extract_init_dict(dict(config), **kwargs)
        obj = cls(**init)
        if "_class_name" in hidden:
            hidden["_class_name"] = cls.__name__
        obj.register_to_config(**hidden)
        if return_unused_kwargs:
            return obj, {**unused, **hidden}
        return obj


def _lookup_class(name: str) -> type | None:
    import torchdiffusion

    try:
        return getattr(torchdiffusion, name)
    except AttributeError:
        return None


def register_to_config(init):
    """Decorator for ``__init__`` of a :class:`ConfigMixin`: records all arguments (defaults too) in the config.

    Arguments starting with ``_`` are recorded but not passed to ``__init__``; names in
    ``ignore_for_config`` are passed but not recorded.
    """
    signature = inspect.signature(init)
    params = [(name, p.default) for i, (name, p) in enumerate(signature.parameters.items()) if i > 0]
    params = [(n, d) for n, d in params if n not in ("args", "kwargs")]

    @functools.wraps(init)
    def inner(self, *args: Any, **kwargs: Any) -> None:
        if not isinstance(self, ConfigMixin):
            raise RuntimeError(f"@register_to_config used on {type(self).__name__}, which is not a ConfigMixin")
        private = {k: v for k, v in kwargs.items() if k.startswith("_")}
        public = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        ignore = set(getattr(self, "ignore_for_config", []))
        recorded: dict[str, Any] = {}
        names = [n for n, _ in params]
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}() takes at most {len(names)} positional arguments")
        for name, value in zip(names, args):
            recorded[name] = value
        for name, default in params:
            if name in recorded:
                continue
            recorded[name] = public.get(name, default)
        given = set(public) | set(names[: len(args)])
        defaulted = [n for n in recorded if n not in given]
        recorded = {k: v for k, v in recorded.items() if k not in ignore}
        if defaulted:
            recorded["_use_default_values"] = defaulted
        self.register_to_config(**private, **recorded)
        init(self, *args, **public)

    return inner
