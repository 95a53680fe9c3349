"""Backend selection: the one place that decides which time loop runs.

    reference  Python loop over the cell's step math, hand-derived BPTT (always available)
    autograd   the same Python loop differentiated by autograd (the readable oracle)

``auto`` (the default) picks the fastest available backend.  The choice comes
from the ``backend=`` argument of a layer, else the ``RNNKIT_BACKEND``
environment variable, else ``auto``.  Asking for one that is not available is
an error, never a silent fallback.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Dict, Optional

from . import reference

_AVAILABLE: Dict[str, Optional[ModuleType]] = {"reference": reference, "autograd": None}
BACKENDS = ("auto",) + tuple(_AVAILABLE)


def available() -> tuple:
    """Names of the backends that can run here."""
    return tuple(_AVAILABLE)


def resolve(name: Optional[str] = None) -> str:
    """Turn an argument / env var / 'auto' into the name of an available backend."""
    source = "backend"
    if name is None:
        name = os.environ.get("RNNKIT_BACKEND", "auto")
        source = "RNNKIT_BACKEND"
    if name not in BACKENDS:
        raise ValueError(f"{source}: expected one of {BACKENDS}, got {name!r}")
    if name == "auto":
        return "reference"
    return name


def get(name: str) -> Optional[ModuleType]:
    """The module implementing ``forward``/``backward`` for a resolved name (None for autograd)."""
    return _AVAILABLE[name]
