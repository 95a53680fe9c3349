"""The build lock of the C++ kernels (rnnkit/backends/_build.py): a lock left by an interrupted
build (its process killed) is taken over, a live one is waited for and, past the timeout, refused
with a RuntimeError naming the lock -- never an endless wait.

Nothing is compiled: torch's ninja build and its import of the library are replaced by fakes, so
that torch's own file lock (``cpp_extension.load`` waits for a ``lock`` file without end) is real.
Each case runs in a thread with a deadline, so a hang fails the test instead of the session.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from torch.utils import cpp_extension

from rnnkit import noise, sequence
from rnnkit.backends import _build

DEADLINE = 30.0          # s; the cases take well under a second when the lock works


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A temporary cache root, a fresh load() state, and fake build steps that record their calls."""
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setattr(_build, "POLL", 0.01)
    monkeypatch.setattr(noise, "_cpu_fill", noise._cpu_fill)       # load() registers the fake module's
    monkeypatch.setattr(sequence, "_cpu_empty", sequence._cpu_empty)   # (absent) functions: restored
    monkeypatch.setattr(sequence, "_cpu_rows", sequence._cpu_rows)
    monkeypatch.setattr(sequence, "_cpu_packing", sequence._cpu_packing)
    monkeypatch.setattr(cpp_extension, "JIT_EXTENSION_VERSIONER", cpp_extension.ExtensionVersioner())
    built = []

    def fake_build(name, sources, extra_cflags, extra_cuda_cflags, extra_sycl_cflags, extra_ldflags,
                   extra_include_paths, build_directory, verbose, with_cuda, with_sycl, is_standalone):
        lock = json.loads((tmp_path / os.path.basename(build_directory) / _build.LOCK).read_text())
        built.append((name, lock))
        with open(os.path.join(build_directory, f"{name}.so"), "w") as f:
            f.write("not a library")

    monkeypatch.setattr(cpp_extension, "_write_ninja_file_and_build_library", fake_build)
    monkeypatch.setattr(cpp_extension, "_import_module_from_library", lambda name, folder, py: ("module", name))
    monkeypatch.setattr(_build, "_import", lambda path, name: ("module", name))
    return built


def folder(native=True):
    name = f"{_build._NAME}_{_build._tag(native)}"
    path = _build.cache_root() / name
    path.mkdir(parents=True, exist_ok=True)
    return name, path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(path, pid, host=None, age=0.0):
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "time": time.time() - age}))
    if age:
        t = time.time() - age
        os.utime(path, (t, t))


def within_deadline(fn, *args):
    """fn(*args) in a thread: its result, or its exception raised here; fails past DEADLINE."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as e:      # noqa: BLE001 - handed to the test
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), f"{fn.__name__} still waiting after {DEADLINE} s (a stale lock hangs the load)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_lock_of_a_killed_build_is_taken_over(cache):
    name, path = folder()
    plant(path / _build.LOCK, dead_pid())
    (path / "lock").write_text("")                   # torch's lock, left by the same killed build
    (path / f"{name}.so").write_text("half-linked")
    assert within_deadline(_build._compile, True, False) == ("module", name)
    assert [n for n, _ in cache] == [name]           # built again (linked again: the library may be partial)
    assert cache[0][1]["pid"] == os.getpid() and cache[0][1]["host"] == socket.gethostname()
    assert not (path / "lock").exists() and not (path / _build.LOCK).exists()
    assert sorted(p.name for p in path.iterdir()) == [f"{name}.so"]


def test_torch_lock_left_by_an_older_interrupted_build_is_removed(cache):
    name, path = folder()
    (path / "lock").write_text("")                   # no owner named: only a build could have left it
    assert within_deadline(_build._compile, True, False) == ("module", name)
    assert [n for n, _ in cache] == [name]
    assert not (path / "lock").exists() and not (path / _build.LOCK).exists()


def test_a_lock_untouched_for_the_stale_timeout_is_taken_over(cache):
    name, path = folder()
    plant(path / _build.LOCK, 1, host="another-host", age=_build.STALE_AFTER + 60)
    assert within_deadline(_build._compile, True, False) == ("module", name)
    assert [n for n, _ in cache] == [name]


@pytest.mark.parametrize("owner", ["this process", "another host"])
def test_a_live_lock_is_waited_for_then_refused_by_name(cache, monkeypatch, owner):
    name, path = folder()
    lock = path / _build.LOCK
    plant(lock, os.getpid()) if owner == "this process" else plant(lock, 1, host="another-host")
    monkeypatch.setattr(_build, "WAIT_TIMEOUT", 0.3)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="build lock") as info:
        within_deadline(_build._compile, True, False)
    assert str(lock) in str(info.value)
    assert time.monotonic() - t0 >= 0.3
    assert cache == [] and lock.exists()             # nothing built, the owner's lock left alone


def test_load_reports_the_timeout_and_does_not_build_the_plain_library(cache, monkeypatch):
    name, path = folder()
    plant(path / _build.LOCK, os.getpid())
    monkeypatch.setattr(_build, "WAIT_TIMEOUT", 0.1)
    assert within_deadline(_build.load) is None
    assert str(path / _build.LOCK) in _build.error()
    assert cache == []


def test_a_build_in_progress_is_waited_for_and_its_library_loaded(cache):
    name, path = folder()
    plant(path / _build.LOCK, os.getpid())

    def finish():                                    # the owner finishes after a while
        time.sleep(0.2)
        (path / f"{name}.so").write_text("built")
        (path / _build.LOCK).unlink()

    threading.Thread(target=finish, daemon=True).start()
    assert within_deadline(_build._compile, True, False) == ("module", name)
    assert cache == []                               # loaded, not built again


def test_the_owner_touches_its_lock_while_it_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(_build, "HEARTBEAT", 0.02)
    path = tmp_path / _build.LOCK
    with _build._BuildLock(path):
        owner = json.loads(path.read_text())
        assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
        old = time.time() - _build.STALE_AFTER - 60
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5  # not stale while its owner builds
    assert not path.exists()


@pytest.mark.parametrize("user_jobs", [None, "3"])
def test_the_build_runs_one_compiler_per_core_largest_source_first(cache, monkeypatch, user_jobs):
    """Torch's default of cores + 2 compilers was slower on two cores; the user's MAX_JOBS wins,
    and the environment is left as it was."""
    if user_jobs is None:
        monkeypatch.delenv("MAX_JOBS", raising=False)
    else:
        monkeypatch.setenv("MAX_JOBS", user_jobs)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    seen = {}
    inner = cpp_extension._write_ninja_file_and_build_library

    def spy(name, sources, *args, **kwargs):
        seen.update(jobs=os.environ.get("MAX_JOBS"), sources=list(sources))
        return inner(name, sources, *args, **kwargs)

    monkeypatch.setattr(cpp_extension, "_write_ninja_file_and_build_library", spy)
    _build.load()
    assert seen["jobs"] == (user_jobs or "2")
    assert os.environ.get("MAX_JOBS") == user_jobs
    sizes = [os.path.getsize(s) for s in seen["sources"]]
    assert sizes == sorted(sizes, reverse=True)
    assert sorted(map(os.path.basename, seen["sources"])) == sorted(p.name for p in _build.CSRC.glob("*.cpp"))
