"""What a run takes from the machine: memory (checked before anything large is allocated) and
CPU threads (chosen from the work per step unless ``--threads`` says).

Memory: ``require(nbytes, what, hint)`` compares an estimate with the memory the machine has
available now (``MemAvailable`` on Linux; free GPU memory for a CUDA device) and raises a
one-line UserError when the run cannot fit, instead of letting an allocation fail midway.

Threads: on CPU, torch's intra-op threads pay off only when one step's matrix products are
large; for small batch x hidden the per-step synchronisation of the threads costs more than it
saves, and on a machine whose other cores are busy a second thread waits for a core at every
step (the measurements behind ``MIN_WORK_FOR_THREADS`` are in the README, Threads).  The
choice never changes results: see ``README.md``, Threads.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

from .errors import UserError

GiB = 2.0 ** 30
# Multiply-adds per recurrent step (batch x recurrent weights) from which a quiet machine gets
# more than one thread.  On a busy 2-core machine one thread was faster at every size measured
# (up to batch 256 x hidden 512; README, Threads); on a quiet one, two threads pay off only for
# GEMMs large enough to amortise a synchronisation per step (ANCHORS: 83 GFLOP/s on one thread,
# 120-198 on two, for large GEMMs).
MIN_WORK_FOR_THREADS = 16_000_000
DEFAULT_THREADS = torch.get_num_threads()        # torch's own choice, before any run changes it


def available_memory(device: torch.device) -> Optional[float]:
    """Bytes that can be allocated now on ``device`` (None when unknown)."""
    if device.type == "cuda":
        try:
            return float(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def require(nbytes: float, what: str, hint: str, device: torch.device = torch.device("cpu")) -> None:
    """UserError when ``nbytes`` will not fit in the memory available on ``device``."""
    have = available_memory(device)
    if have is not None and nbytes > have:
        raise UserError(f"{what} needs about {_size(nbytes)}, more than the {_size(have)} "
                        f"available on {device.type}; {hint}")


def _size(nbytes: float) -> str:
    return f"{nbytes / GiB:,.1f} GiB" if nbytes >= 0.1 * GiB else f"{nbytes / 2**20:,.0f} MiB"


def busy(cores: int) -> bool:
    """Whether other work holds the cores: a 1-minute load average above cores - 0.5."""
    try:
        return os.getloadavg()[0] > cores - 0.5
    except OSError:
        return False


def auto_threads(work: float, cores: Optional[int] = None) -> int:
    """Threads for a run whose recurrent step does ``work`` multiply-adds: torch's default
    number when the step is large (``MIN_WORK_FOR_THREADS``) and the machine is not busy, else 1."""
    cores = cores or DEFAULT_THREADS
    return 1 if cores <= 1 or work < MIN_WORK_FOR_THREADS or busy(cores) else cores


@contextlib.contextmanager
def threads(n: int) -> Iterator[int]:
    """Run the body with ``n`` intra-op threads, then put torch's setting back."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)
