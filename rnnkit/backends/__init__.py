"""Backend selection: the one place that decides which time loop runs (the contract: base.py).

    cpu        the fused C++ kernels of rnnkit/csrc, built on first use (needs a C++ compiler)
    triton     persistent Triton kernels for CUDA tensors (rnnkit/backends/triton_kernels)
    reference  Python loop over the cell's step math, hand-derived BPTT (always available)
    autograd   the same Python loop differentiated by autograd (the readable oracle)

``auto`` (the default) walks ``PRIORITY`` and takes the first backend that ``supports`` the
(cell, device, dtype) at hand, warning once when a backend it would have preferred cannot run
on this machine at all.  The choice comes from the ``backend=`` argument of a layer, else the
``RNNKIT_BACKEND`` environment variable, else ``auto``.  Naming a backend that cannot run the
case is an error, never a silent fallback.  A new backend registers in ``_REGISTERED`` (and
``PRIORITY`` when ``auto`` should pick it).
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Dict, Optional

import torch

from ..cells.base import Cell
from . import autograd, cpu, library, reference, triton
from .base import Backend, Support

_REGISTERED: Dict[str, Backend] = {b.name: b for b in (reference.BACKEND, autograd.BACKEND, cpu.BACKEND,
                                                                 triton.BACKEND)}
PRIORITY = ("cpu", "triton", "reference")                 # what ``auto`` tries, first match wins
ORACLE = "autograd"                             # the backend whose forward autograd differentiates
BACKENDS = ("auto",) + tuple(_REGISTERED)
_warned = set()


def get(name: str) -> Backend:
    """The registered backend of that name (whether or not it can run here)."""
    return _REGISTERED[name]


def available() -> tuple:
    """Names of the backends that can run here (building the C++ kernels if needed)."""
    return tuple(n for n, b in _REGISTERED.items() if b.available())


def _requested(name: Optional[str]):
    """(name, where it came from): the argument, else RNNKIT_BACKEND, else 'auto'; checked."""
    source = "backend"
    if name is None:
        name = os.environ.get("RNNKIT_BACKEND", "auto")
        source = "RNNKIT_BACKEND"
    if name not in BACKENDS:
        raise ValueError(f"{source}: expected one of {BACKENDS}, got {name!r}")
    return name, source


def _runnable(name: str, source: str) -> Backend:
    backend = _REGISTERED[name]
    ok = backend.available()
    if not ok:
        raise RuntimeError(f"{source}: {name!r} is not available here: {ok.reason}")
    return backend


def check_name(name: Optional[str]) -> None:
    """Check a backend name before any data is seen: known, and (unless 'auto') runnable here."""
    name, source = _requested(name)
    if name != "auto":
        _runnable(name, source)


def _auto(cell, device, dtype) -> Backend:
    missing = []                                # preferred backends that cannot run here at all
    for name in PRIORITY:
        backend = _REGISTERED[name]
        ok = backend.supports(cell, device, dtype)
        if ok:
            for skipped, reason in missing:
                if skipped not in _warned:
                    _warned.add(skipped)
                    warnings.warn(f"rnnkit: the {skipped!r} backend is not available ({reason}); "
                                  f"using {name!r}", RuntimeWarning, stacklevel=5)
            return backend
        # warn only where the backend would have run this case but cannot run at all here (not,
        # e.g., the cpu backend asked about CUDA tensors, which must not build its kernels either)
        if ok.unavailable:
            missing.append((name, ok.reason))
    raise RuntimeError(f"backend: no backend supports the {cell.name!r} cell on {device} {dtype}")


def resolve(name: Optional[str], cell, device, dtype: torch.dtype) -> Backend:
    """The backend that runs ``cell`` on tensors of this device and dtype.

    ``name``: the layer's ``backend`` argument (None: RNNKIT_BACKEND, else 'auto').
    Under torch.compile the choice is made once, while tracing, and is a constant of the graph.
    """
    if torch.compiler.is_compiling():
        return get(_resolve_while_tracing(name, cell.spec, str(device), dtype))
    return _resolve(name, cell, device, dtype)


def _constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing torch._dynamo for it.

    The public decorator imports torch._dynamo, 1.4 s of a 3.4 s first run here (``import rnnkit``
    and one call), which a program that never compiles should not pay.  Dynamo reads the mark
    when it meets the call, so setting the same mark as its decorator is the same; a test checks
    that the two marks agree, and once torch._dynamo is loaded anyway the decorator itself is used.
    """
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


@_constant_result
def _resolve_while_tracing(name: Optional[str], spec: str, device: str, dtype: torch.dtype) -> str:
    return _resolve(name, Cell.from_spec(spec), device, dtype).name


def _resolve(name: Optional[str], cell, device, dtype: torch.dtype) -> Backend:
    name, source = _requested(name)
    if name == "auto":
        return _auto(cell, torch.device(device), dtype)
    backend = _runnable(name, source)
    ok = backend.supports(cell, torch.device(device), dtype)
    if not ok:
        raise RuntimeError(f"{source}: {name!r} cannot run the {cell.name!r} cell here: {ok.reason}")
    return backend


def autocast_dtype(name: Optional[str], cell, device, param_dtype: torch.dtype, amp: torch.dtype) -> torch.dtype:
    """The dtype a layer's recurrence runs in under autocast to ``amp``: ``amp`` where the backend
    that would run ``amp`` tensors keeps its states in float32 (``Backend.float32_state``), else the
    parameters' own dtype."""
    try:
        backend = resolve(name, cell, device, amp)
    except RuntimeError:                        # e.g. a named backend that runs only float32
        return param_dtype
    return amp if backend.float32_state(amp) else param_dtype


_resolved: Dict[tuple, Backend] = {}


# os.environ.get costs about 1 us, and 5-6 us inside a training loop of small steps (measured: a
# Cell module's step and backward at B = 1), most of it the KeyError raised inside when the
# variable is unset, the usual case.  The mapping keeps its encoded items in a dict that every
# change through os.environ (monkeypatch.setenv included) updates; reading it directly is the same
# answer.  Where that dict is not there (another Python), the public call.
_ENV_DATA = getattr(os.environ, "_data", None)
try:
    _ENV_KEY = os.environ.encodekey("RNNKIT_BACKEND")
    _decode = os.environ.decodevalue
except AttributeError:                                  # pragma: no cover - not CPython's os.environ
    _ENV_DATA = None


def _env_choice() -> Optional[str]:
    """RNNKIT_BACKEND as os.environ holds it now (None when unset)."""
    if _ENV_DATA is None:                               # pragma: no cover
        return os.environ.get("RNNKIT_BACKEND")
    value = _ENV_DATA.get(_ENV_KEY)
    return None if value is None else _decode(value)


def resolve_cached(name: Optional[str], cell, device, dtype: torch.dtype) -> Backend:
    """``resolve`` memoised for per-call callers (a layer's ``forward`` and ``step``: resolving
    anew cost about 1.7 us of a 30 us one-step forward).

    The key holds everything the answer depends on: the argument, RNNKIT_BACKEND (read on every
    call, so a changed variable is seen), the cell's kind, device and dtype.  Failures are not
    memoised, so a backend that becomes available is seen.
    """
    if torch.compiler.is_compiling():
        return resolve(name, cell, device, dtype)
    key = (name, _env_choice() if name is None else None, cell.key, device, dtype)
    hit = _resolved.get(key)
    if hit is None:
        hit = _resolved[key] = resolve(name, cell, device, dtype)
    return hit


__all__ = ["Backend", "Support", "BACKENDS", "PRIORITY", "ORACLE", "available", "check_name", "get",
           "resolve", "resolve_cached", "autocast_dtype"]
