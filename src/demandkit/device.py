"""Where tensors live: the one place that turns a user's ``device`` argument into a ``torch.device``."""

from __future__ import annotations

import warnings

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; CUDA that is not available falls back to the CPU with a warning."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn("CUDA is not available; running on the CPU.", UserWarning, stacklevel=3)
        return torch.device("cpu")
    return device
