"""The random-configuration run of tests/fuzz_parity.py, in a subprocess so that a crash in a
kernel is a failed test, not a dead suite (the full 500-configuration run, every configuration
compiled: see that file)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FUZZ = Path(__file__).with_name("fuzz_parity.py")


def fuzz(*args: str) -> dict:
    res = subprocess.run([sys.executable, str(FUZZ), *args], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_random_configurations_agree_with_torch_nn():
    counts = fuzz("--n", "40", "--seed", "7", "--compile", "none")
    assert counts["failures"] == 0 and counts["configs"] == 40
    assert counts["forward"] + counts["refused"] == 40 and counts["step"] > 0 and counts["double_backward"] > 0


def test_compiled_random_configurations_agree_with_torch_nn():
    counts = fuzz("--n", "8", "--seed", "11")                      # aot_eager: dynamo + AOTAutograd, no codegen
    assert counts["failures"] == 0 and counts["compile_aot_eager"] == counts["forward"] > 0
