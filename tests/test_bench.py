"""``rnnkit bench`` smoke run at tiny sizes: every row is there, finite and well formed.

Not a timing test: the numbers on a shared CI machine say nothing; the full run's table lives in
BENCHMARKS.md.
"""
import json
import math

import pytest

from rnnkit import bench, cli
from rnnkit.backends import cpu

pytestmark = pytest.mark.skipif(cpu.extension() is None, reason="the C++ kernels did not build")


def test_quick_run_rows(tmp_path):
    path = tmp_path / "bench.json"
    args = cli.build_parser().parse_args(["bench", "--quick", "--repeats", "1", "--no-memory",
                                          "--json", str(path)])
    assert bench.run(args) == 0
    result = json.loads(path.read_text())
    rows = result["rows"]
    assert {"cpu", "cores", "torch"} <= set(result["machine"])
    modes = {(r["cell"], r["mode"]) for r in rows}
    for cell in ("rnn", "gru", "lstm", "jordan"):
        assert {(cell, "fwd"), (cell, "fwd+bwd")} <= modes
    for cell in ("rnn", "gru", "lstm"):
        assert {(cell, "step"), (cell, "stream")} <= modes
    assert {r["baseline"] for r in rows if r["cell"] == "lstm"} >= {"torch.nn", "torch.nn (no oneDNN)"}
    assert any("bidir" in r["case"] for r in rows) and any("varlen" in r["case"] for r in rows)
    for r in rows:
        for key in ("baseline_ms", "rnnkit_ms", "ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, r
        assert r["ratio"] == pytest.approx(r["baseline_ms"] / r["rnnkit_ms"])


def test_memory_row_measures_something():
    row = bench.bench_memory("gru", 64, 16, 64)
    assert row.mode == "memory MiB" and row.baseline_ms > 0 and row.rnnkit_ms > 0


def test_bad_cells_argument_is_an_error():
    args = cli.build_parser().parse_args(["bench", "--quick", "--cells", "lstm,transformer"])
    with pytest.raises(SystemExit, match="--cells"):
        bench.run(args)
