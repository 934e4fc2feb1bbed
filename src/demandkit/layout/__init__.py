"""From the user's tables to padded batched tensors: validation of the tables, and the ``[markets, slots]`` layout
with its map back to the user's row order."""

from .padding import Layout

__all__ = ["Layout"]
