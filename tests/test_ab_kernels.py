"""tools/ab_kernels.py: two builds of the kernels timed in one process (here the same build twice)."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from rnnkit.backends import _build, cpu

TOOL = Path(__file__).resolve().parents[1] / "tools" / "ab_kernels.py"


def _tool():
    spec = importlib.util.spec_from_file_location("ab_kernels", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built():
    ext = _build.load()
    if ext is None:
        pytest.skip("the C++ kernels could not be built here")
    return ext


class Counting:
    """A build that counts the kernel entry points called through it."""

    def __init__(self, ext):
        self.ext, self.calls = ext, {}

    def __getattr__(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1
        return getattr(self.ext, name)


def test_compare_runs_each_build_and_restores_the_extension(built):
    tool = _tool()
    build = tool.load_build(built.__file__)
    before = cpu.extension
    for case, entry in (("RNN:2:16", "infer"), ("LSTM:1:16:train", "train_backward")):
        old, new = Counting(build), Counting(build)
        r = tool.compare(old, new, case, rounds=3, T=4, sample_ms=0.2)
        assert old.calls.get(entry, 0) >= 3 and new.calls.get(entry, 0) >= 3, (old.calls, new.calls)
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("old", "new", "ratio", "q1", "q3"))
    assert cpu.extension is before
    assert torch.is_grad_enabled()


def test_bad_case_and_missing_build_are_named(built, tmp_path):
    tool = _tool()
    build = tool.load_build(built.__file__)
    with pytest.raises(ValueError, match="cases: expected cell:B:H"):
        tool.compare(build, build, "LSTM:1", rounds=1, T=2)
    with pytest.raises(ValueError, match="cases: expected cell:B:H"):
        tool.compare(build, build, "LSTM:1:8:fast", rounds=1, T=2)
    with pytest.raises(FileNotFoundError, match="build: expected a built extension file"):
        tool.load_build(str(tmp_path / "missing.so"))
