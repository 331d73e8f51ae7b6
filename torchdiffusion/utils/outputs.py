"""Output containers: dataclasses that also behave like tuples and dicts (``out.sample``, ``out[0]``)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import fields, is_dataclass
from typing import Any


class BaseOutput(OrderedDict):
    """Base for ``@dataclass`` outputs. Fields that are ``None`` are left out of the tuple/dict views."""

    def __post_init__(self) -> None:
        if not is_dataclass(self):
            raise TypeError(f"{type(self).__name__} must be a @dataclass")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                super().__setitem__(f.name, value)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return dict(self.items())[key]
        return self.to_tuple()[key]

    def __setattr__(self, name: str, value: Any) -> None:
        if value is not None and (name in self.keys() or name in {f.name for f in fields(self)}):
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self):
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-``None`` fields in declaration order."""
        return tuple(self[k] for k in self.keys())
