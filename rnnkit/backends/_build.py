"""Build and load the C++ kernels of the ``cpu`` backend (rnnkit/csrc), once per machine.

The extension is compiled on first use with the compiler that is there (torch's JIT
``cpp_extension.load``, which drives ninja) into a cache folder named after a hash of the
sources, the flags, torch's version and the CPU's instruction sets; a later import finds the
built library there and loads it directly, without invoking the compiler.  ``rnnkit build``
runs the build ahead of time.

Cache root: ``$RNNKIT_CACHE``, else ``$XDG_CACHE_HOME/rnnkit``, else ``~/.cache/rnnkit``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import List, Optional

import torch

CSRC = Path(__file__).resolve().parent.parent / "csrc"
_NAME = "rnnkit_cpu"
_state: dict = {}            # "module" or "error", set by the first load()


def cache_root() -> Path:
    if os.environ.get("RNNKIT_CACHE"):
        return Path(os.environ["RNNKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnkit"


def _sources() -> List[Path]:
    return sorted(CSRC.glob("*.cpp"))


def _cpu_signature() -> str:
    """The CPU's instruction sets: -march=native code must not run on another CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _flags(native: bool) -> List[str]:
    # torch's own build uses -fno-math-errno -fno-trapping-math too; without them gcc does not
    # if-convert the branch-free activations and the gate loops stay scalar.  -fopenmp: ATen's
    # at::parallel_for is an OpenMP pragma in a header, compiled into the extension (without the
    # flag it runs serially); the library then needs libgomp.so.1, the one torch has loaded.
    return ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"] + (["-march=native"] if native else [])


def _tag(native: bool) -> str:
    """Hash of everything that changes the built library."""
    h = hashlib.sha256()
    for src in _sources() + sorted(CSRC.glob("*.h")):
        h.update(src.name.encode() + src.read_bytes())
    h.update(" ".join(_flags(native)).encode())
    h.update(torch.__version__.encode() + sys.version.encode() + _cpu_signature().encode())
    return h.hexdigest()[:12]


def _import(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ninja_on_path() -> None:
    """torch's JIT build needs ``ninja`` on PATH; the pip package puts it beside the venv's python."""
    if shutil.which("ninja") is None:
        try:
            import ninja
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass


def _compile(native: bool, verbose: bool) -> ModuleType:
    name = f"{_NAME}_{_tag(native)}"
    folder = cache_root() / name
    built = folder / f"{name}.so"
    if built.exists() and not (folder / "lock").exists():
        return _import(built, name)
    folder.mkdir(parents=True, exist_ok=True)
    _ninja_on_path()
    from torch.utils import cpp_extension
    if not verbose:
        sys.stderr.write("rnnkit: compiling the C++ CPU kernels (once; about a minute)\n")
    return cpp_extension.load(name=name, sources=[str(s) for s in _sources()],
                              extra_cflags=_flags(native), extra_ldflags=["-fopenmp"],
                              build_directory=str(folder), verbose=verbose)


def load(verbose: bool = False) -> Optional[ModuleType]:
    """The compiled extension, building it if needed; None if it cannot be built here."""
    if "module" in _state or "error" in _state:
        return _state.get("module")
    errors = []
    for native in (True, False):        # -march=native first; a compiler without it gets plain -O3
        try:
            _state["module"] = _compile(native, verbose)
            return _state["module"]
        except Exception as e:          # noqa: BLE001 - any build failure means "not available"
            errors.append(f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
    _state["error"] = "; ".join(errors)
    return None


def error() -> Optional[str]:
    """Why the extension is not available (None when it loaded or was not tried)."""
    return _state.get("error")


# -- `rnnkit build` ------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show the compiler's command lines")


def run(args) -> int:
    t0 = time.perf_counter()
    module = load(verbose=args.verbose)
    if module is None:
        print(f"rnnkit: the C++ CPU kernels could not be built: {error()}", file=sys.stderr)
        return 1
    print(f"rnnkit: C++ CPU kernels ready in {time.perf_counter() - t0:.1f} s "
          f"({module.__file__}; direct BLAS: {module.has_blas()})")
    return 0

