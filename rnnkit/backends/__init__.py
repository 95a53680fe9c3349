"""Backend selection: the one place that decides which time loop runs.

    reference  Python loop over the cell's step math, hand-derived BPTT (always available)
    autograd   the same Python loop differentiated by autograd (the readable oracle)
    cpu        the fused C++ kernels of rnnkit/csrc, built on first use (needs a C++ compiler)

``auto`` (the default) picks ``cpu`` for CPU float32/float64 tensors when the kernels are
built, else ``reference``, warning once when ``cpu`` could not be built.  The choice comes
from the ``backend=`` argument of a layer, else the ``RNNKIT_BACKEND`` environment
variable, else ``auto``.  Asking for one that is not available is an error, never a silent
fallback.
"""
from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Dict, Optional

import torch

from . import cpu, reference

_MODULES: Dict[str, Optional[ModuleType]] = {"reference": reference, "autograd": None, "cpu": cpu}
BACKENDS = ("auto",) + tuple(_MODULES)
_FUSED_DTYPES = (torch.float32, torch.float64)
_warned = False


def _cpu_available() -> bool:
    return cpu.extension() is not None


def available() -> tuple:
    """Names of the backends that can run here (building the C++ kernels if needed)."""
    return tuple(n for n in _MODULES if n != "cpu" or _cpu_available())


def _auto(device, dtype) -> str:
    global _warned
    if device is not None and torch.device(device).type != "cpu":
        return "reference"
    if dtype is not None and dtype not in _FUSED_DTYPES:
        return "reference"
    if _cpu_available():
        return "cpu"
    if not _warned:
        _warned = True
        warnings.warn(f"rnnkit: the C++ CPU backend is not available ({cpu._build.error()}); "
                      "using the slower 'reference' backend", RuntimeWarning, stacklevel=4)
    return "reference"


def resolve(name: Optional[str] = None, device=None, dtype=None) -> str:
    """Turn an argument / env var / 'auto' into the name of an available backend.

    ``device`` and ``dtype`` (of the data about to run) let ``auto`` skip the fused kernels
    where they do not apply.
    """
    source = "backend"
    if name is None:
        name = os.environ.get("RNNKIT_BACKEND", "auto")
        source = "RNNKIT_BACKEND"
    if name not in BACKENDS:
        raise ValueError(f"{source}: expected one of {BACKENDS}, got {name!r}")
    if name == "auto":
        return _auto(device, dtype)
    if name == "cpu" and not _cpu_available():
        raise RuntimeError(f"{source}: 'cpu' is not available here: the C++ kernels could not be "
                           f"built ({cpu._build.error()}); run `rnnkit build --verbose` to see why")
    return name


_resolved: Dict[tuple, str] = {}


def resolve_cached(name: Optional[str], device, dtype) -> str:
    """``resolve`` memoised for per-step callers (``model.step``).

    The key holds everything the answer depends on: the argument, RNNKIT_BACKEND (read on every
    call, so a changed variable is seen), device, dtype and whether the kernels are available.
    """
    key = (name, os.environ.get("RNNKIT_BACKEND") if name is None else None, device, dtype, _cpu_available())
    hit = _resolved.get(key)
    if hit is None:
        hit = _resolved[key] = resolve(name, device, dtype)
    return hit


def get(name: str) -> Optional[ModuleType]:
    """The module implementing ``forward``/``backward`` for a resolved name (None for autograd)."""
    return _MODULES[name]
