"""Device selection for ``--device auto|cpu|cuda[:N]``."""

from __future__ import annotations

import torch

from cryolens.errors import InputError

__all__ = ["resolve_device"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU when one is usable, else the CPU."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is available to this process; use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device name; use auto, cpu or cuda (cuda:N).") from None
