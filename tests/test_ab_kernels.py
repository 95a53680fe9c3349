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


def test_compare_times_both_builds_and_restores_the_extension(built):
    tool = _tool()
    build = tool.load_build(built.__file__)
    before = cpu.extension
    for case in ("RNN:2:16", "LSTM:1:16:train"):
        r = tool.compare(build, build, case, rounds=3, T=4, sample_ms=0.2)
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("old", "new", "ratio", "q1", "q3"))
        assert r["q1"] <= r["ratio"] <= r["q3"]
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
