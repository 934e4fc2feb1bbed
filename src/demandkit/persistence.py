"""Saving and loading results: JSON through ``to_dict`` and pickle, shared by every results class."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, TypeVar

Loaded = TypeVar("Loaded", bound="Persistent")


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
        """Load an object saved by :meth:`to_pickle`; only open files you trust (pickle runs code)."""
        with open(path, "rb") as handle:
            loaded = pickle.load(handle)
        if not isinstance(loaded, cls):
            raise TypeError(f"{path} holds a {type(loaded).__name__}, not a {cls.__name__}.")
        return loaded
