"""Saving and loading results: JSON through ``to_dict`` and pickle, shared by every results class."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, TypeVar

Loaded = TypeVar("Loaded", bound="Persistent")

# What pickle.load raises on a damaged or foreign file (an empty file gives EOFError, a missing class AttributeError
# or ImportError, stray bytes UnpicklingError or one of the others); kept apart from OSError (a missing file).
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
)


class Persistent:
    """``to_json``, ``to_pickle`` and ``from_pickle`` for a class that defines ``to_dict``."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def to_json(self, path: str | Path | None = None) -> str:
        """The results as JSON text (from :meth:`to_dict`), also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_pickle(self, path: str | Path) -> None:
        """Save the whole object (arrays, tensors and the model behind it) to ``path``."""
        with open(path, "wb") as handle:
            pickle.dump(self, handle)

    @classmethod
    def from_pickle(cls: type[Loaded], path: str | Path) -> Loaded:
        """Load an object saved by :meth:`to_pickle`; only open files you trust (pickle runs code).

        Raises
        ------
        ValueError
            The file is not a readable pickle (truncated, corrupt, another format, or classes that this
            version of demandkit does not have); the message names the file.
        TypeError
            The file holds an object of another class.
        """
        with open(path, "rb") as handle:
            try:
                loaded = pickle.load(handle)
            except _UNREADABLE as error:
                raise ValueError(
                    f"{path} is not a readable pickle of a {cls.__name__} ({type(error).__name__}: {error}); the "
                    "file may be truncated or corrupt, in another format, or written by another version of demandkit."
                ) from error
        if not isinstance(loaded, cls):
            raise TypeError(f"{path} holds a {type(loaded).__name__}, not a {cls.__name__}.")
        return loaded
