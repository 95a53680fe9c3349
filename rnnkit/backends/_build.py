"""Build and load the C++ kernels of the ``cpu`` backend (rnnkit/csrc), once per machine.

The extension is compiled on first use with the compiler that is there (torch's JIT
``cpp_extension.load``, which drives ninja) into a cache folder named after a hash of the
sources, the flags, torch's version and the CPU's instruction sets; a later import finds the
built library there and loads it directly, without invoking the compiler.  ``rnnkit build``
runs the build ahead of time.

Cache root: ``$RNNKIT_CACHE``, else ``$XDG_CACHE_HOME/rnnkit``, else ``~/.cache/rnnkit``.

One build per folder at a time: a builder holds ``build.lock`` there (created exclusively; it
names the owner's PID and host, and the owner touches it while it builds).  A waiter takes over
a lock whose owner is dead (same host) or that has not been touched for ``STALE_AFTER`` seconds,
and gives up after ``WAIT_TIMEOUT`` seconds with a RuntimeError naming the lock.  While it holds
the lock, torch's own ``lock`` file there (``cpp_extension.load`` waits for it without end) can
only be left by an interrupted build, and is removed.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import List, Optional

import torch

from .. import noise, sequence

CSRC = Path(__file__).resolve().parent.parent / "csrc"
_NAME = "rnnkit_cpu"
_state: dict = {}            # "module" or "error", set by the first load()
LOCK = "build.lock"          # rnnkit's lock in a build folder; "lock" is torch's own
STALE_AFTER = 15 * 60.0      # s without a touch from its owner: a lock is stale (its owner is gone)
WAIT_TIMEOUT = 30 * 60.0     # s a load waits for another process's build before it gives up
HEARTBEAT = 30.0             # s between the owner's touches of its lock while it builds
POLL = 0.5                   # s between a waiter's looks at the lock


def cache_root() -> Path:
    if os.environ.get("RNNKIT_CACHE"):
        return Path(os.environ["RNNKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnkit"


def _sources() -> List[Path]:
    # largest (longest to compile) first: ninja starts them in this order, so that the last
    # minute of a build is not one large file compiling alone (lstm.cpp took 58 s of 97 there)
    return sorted(CSRC.glob("*.cpp"), key=lambda p: (-p.stat().st_size, p.name))


def _jobs() -> str:
    """Compilers run at once: the user's MAX_JOBS, else the cores this process may use.  Torch's
    default (cores + 2) keeps four 1.5 GB compilers on two cores: 82-91 s a build there against
    68-79 s with two (sources in the order above)."""
    if os.environ.get("MAX_JOBS"):
        return os.environ["MAX_JOBS"]
    try:
        return str(len(os.sched_getaffinity(0)))
    except AttributeError:                      # not on Linux
        return str(os.cpu_count() or 1)


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


class BuildLockTimeout(RuntimeError):
    """Another process held the build folder's lock for longer than ``WAIT_TIMEOUT``."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:              # someone else's process: alive
        return True
    except (OverflowError, ValueError):
        return False
    return True


class _BuildLock:
    """``build.lock`` in a build folder, held for a build (see the module's docstring).

    ``took_over`` is True when the lock was taken from a stale owner (an interrupted build).
    """

    def __init__(self, path: Path):
        self.path = path
        self.took_over = False
        self._token = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "time": time.time(), "id": uuid.uuid4().hex})
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def _owner(self):
        """(text, dict or None, mtime) of the lock there now; None when there is none."""
        try:
            text = self.path.read_text()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError:
            return "", None, time.time()
        try:
            owner = json.loads(text)
        except ValueError:
            owner = None                 # being written, or not ours: judged by its age alone
        return text, owner if isinstance(owner, dict) else None, mtime

    @staticmethod
    def _stale(owner: Optional[dict], mtime: float) -> bool:
        if time.time() - mtime > STALE_AFTER:
            return True
        if owner and owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return not _pid_alive(owner["pid"])
        return False

    def _break(self, text: str) -> None:
        """Remove the stale lock whose content was ``text`` -- unless another waiter replaced it
        meanwhile, in which case the new owner's lock is put back."""
        grave = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return                       # another waiter broke it first
        try:
            if grave.read_text() != text:
                try:
                    os.link(grave, self.path)
                except FileExistsError:
                    pass
            else:
                self.took_over = True
        finally:
            grave.unlink(missing_ok=True)

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._token)
        return True

    def __enter__(self) -> "_BuildLock":
        start = time.monotonic()
        while not self._try_create():
            seen = self._owner()
            if seen is not None and self._stale(seen[1], seen[2]):
                self._break(seen[0])
                continue
            waited = time.monotonic() - start
            if waited > WAIT_TIMEOUT:
                who = (f"pid {seen[1].get('pid')} on host {seen[1].get('host')}"
                       if seen and seen[1] else "an unknown process")
                raise BuildLockTimeout(
                    f"waited {waited:.0f} s for the C++ build lock {self.path}, held by {who}; "
                    f"if no rnnkit build is running, delete that file")
            time.sleep(POLL)
        self._beat = threading.Thread(target=self._heartbeat, name="rnnkit-build-lock", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        seen = self._owner()
        if seen is not None and seen[0] == self._token:
            self.path.unlink(missing_ok=True)


def _compile(native: bool, verbose: bool) -> ModuleType:
    name = f"{_NAME}_{_tag(native)}"
    folder = cache_root() / name
    built = folder / f"{name}.so"
    torch_lock = folder / "lock"
    if built.exists() and not torch_lock.exists() and not (folder / LOCK).exists():
        return _import(built, name)
    folder.mkdir(parents=True, exist_ok=True)
    with _BuildLock(folder / LOCK) as lock:
        if lock.took_over or torch_lock.exists():
            # an interrupted build: torch's lock would stall cpp_extension.load for ever, and
            # the library may be half-linked (ninja keeps the object files; it links again)
            torch_lock.unlink(missing_ok=True)
            built.unlink(missing_ok=True)
        elif built.exists():                      # built by the process this one waited for
            return _import(built, name)
        _ninja_on_path()
        from torch.utils import cpp_extension
        if not verbose:
            sys.stderr.write("rnnkit: compiling the C++ CPU kernels (once; about a minute)\n")
        previous = os.environ.get("MAX_JOBS")
        os.environ["MAX_JOBS"] = _jobs()            # torch's build reads the count from there
        try:
            return cpp_extension.load(name=name, sources=[str(s) for s in _sources()],
                                      extra_cflags=_flags(native), extra_ldflags=["-fopenmp"],
                                      build_directory=str(folder), verbose=verbose)
        finally:
            if previous is None:
                os.environ.pop("MAX_JOBS", None)
            else:
                os.environ["MAX_JOBS"] = previous


def load(verbose: bool = False) -> Optional[ModuleType]:
    """The compiled extension, building it if needed; None if it cannot be built here."""
    if "module" in _state or "error" in _state:
        return _state.get("module")
    errors = []
    for native in (True, False):        # -march=native first; a compiler without it gets plain -O3
        try:
            _state["module"] = _compile(native, verbose)
            noise.use_cpu_fill(getattr(_state["module"], "bernoulli_hash", None))   # the masks' fast form
            sequence.use_cpu_empty(getattr(_state["module"], "pooled_empty", None))  # reordered batches
            sequence.use_cpu_rows(getattr(_state["module"], "rows_to_run", None),
                                  getattr(_state["module"], "rows_to_user", None))
            sequence.use_cpu_packing(getattr(_state["module"], "unpack_rows", None),
                                     getattr(_state["module"], "pack_rows", None))
            if not native:                  # kept, so that a failing native build is not silent
                _state["native_error"] = errors[-1] if errors else "not tried"
            return _state["module"]
        except BuildLockTimeout as e:    # another build holds the folder: not a reason to build plain
            errors.append(f"{type(e).__name__}: {e}")
            break
        except Exception as e:          # noqa: BLE001 - any build failure means "not available"
            errors.append(f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
    _state["error"] = "; ".join(errors)
    return None


def loaded() -> Optional[ModuleType]:
    """The extension if this process has loaded it; never builds."""
    return _state.get("module")


def error() -> Optional[str]:
    """Why the extension is not available (None when it loaded or was not tried)."""
    return _state.get("error")


def native_error() -> Optional[str]:
    """Why the loaded extension is the portable build (plain -O3: no AVX-512 loops) rather than
    the -march=native one; None when the native build loaded or nothing was loaded."""
    return _state.get("native_error")


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
    if native_error():
        print(f"rnnkit: the -march=native build failed, so the portable one (slower) runs: {native_error()}",
              file=sys.stderr)
    return 0

