"""A misspelt keyword of a sweep dataclass names the field it probably meant.

Python's own message for ``Sweep(modle=...)`` is ``__init__() got an unexpected keyword
argument 'modle'``: it names neither the class nor the valid fields, and a sweep script is
where users type these names by hand. Kept apart from the dataclasses themselves so that it
is one decorator line per class.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def unknown_field_message(cls: type, key: str) -> str:
    """``Sweep(): unknown field 'modle' (did you mean 'model'?)`` - or the valid fields."""
    known = [f.name for f in fields(cls) if f.init]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"fields: {', '.join(known)}"
    return f"{cls.__name__}(): unknown field {key!r} ({hint})"


def suggest_unknown_fields(cls: type[T]) -> type[T]:
    """Class decorator (above ``@dataclass``): an unknown keyword raises a TypeError that
    suggests the closest field name; everything else is the dataclass's own ``__init__``."""
    init = cls.__init__
    known = {f.name for f in fields(cls) if f.init}  # type: ignore[arg-type]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in known:
                raise TypeError(unknown_field_message(cls, key))
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


__all__ = ["suggest_unknown_fields", "unknown_field_message"]
