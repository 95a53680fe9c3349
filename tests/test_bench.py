"""``rnnkit bench`` smoke run at tiny sizes: every row is there, finite and well formed, and its two
sides do the same work.

Not a timing test: the numbers on a shared CI machine say nothing; the full run's table lives in
BENCHMARKS.md.  The same-work tests run the quick benchmark once with the timer replaced by a
recorder that calls every side of a row once and notes what it ran: the module called and its
parameters, the input (padding zeroed) and lengths, the outputs and the parameter gradients.
"""
import json
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

import rnnkit
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
        assert {(cell, "step"), (cell, "stream"), (cell, "cell"), (cell, "cell+bwd")} <= modes
    variants = {r["case"].split(" T")[0] for r in rows if r["baseline"] == "plain loop (autograd)"}
    assert variants == {f"{c} {v}" for v, (_, on) in bench.VARIANTS.items() for c in on}
    for r in rows:                                     # our plain cell and LSTM timed in the variant's turns
        if r["baseline"] == "plain loop (autograd)":
            assert math.isfinite(r["x_plain"]) and r["x_plain"] > 0 and math.isfinite(r["x_lstm"]), r
            assert (r["x_plain"] == r["x_lstm"]) == (r["cell"] == "lstm"), r
    assert {r["baseline"] for r in rows if r["cell"] == "lstm"} >= {"torch.nn", "torch.nn (no oneDNN)"}
    assert any("bidir" in r["case"] for r in rows) and any("varlen" in r["case"] for r in rows)
    for r in rows:
        for key in ("baseline_ms", "rnnkit_ms", "ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, r
        assert r["ratio"] == pytest.approx(r["baseline_ms"] / r["rnnkit_ms"])


@pytest.mark.parametrize("cell,gates", [("lstm", 4), ("gru", 3)])
def test_memory_rows_of_the_quick_run_measure_the_step(cell, gates):
    """What ``bench --quick`` reports is at least half of what one training step must hold:
    the T*B*G*H gate activations kept for backward (never noise, never negative)."""
    (T, B, H), = bench.QUICK_MEMORY_SIZES
    floor = T * B * gates * H * 4 / 2**20
    row = bench.bench_memory(cell, T, B, H)
    assert row.mode == "memory MiB" and floor >= 0.75
    assert row.baseline_ms >= 0.5 * floor and row.rnnkit_ms >= 0.5 * floor, (row, floor)


def test_variant_costs_are_side_by_side_where_the_row_has_them():
    def row(case, cell, ms, baseline="torch.nn", **kw):
        return {"case": case, "cell": cell, "mode": "fwd", "baseline": baseline, "baseline_ms": 1.0, "rnnkit_ms": ms,
                "ratio": 1.0 / ms, "baseline_gflops": None, "rnnkit_gflops": None, "threads": 2, **kw}
    rows = [row("gru T8 B2 H4", "gru", 2.0), row("lstm T8 B2 H4", "lstm", 4.0),
            row("gru zoneout T8 B2 H4", "gru", 3.0, "plain loop (autograd)", x_plain=2.0, x_lstm=1.2),
            row("gru clip T8 B2 H4", "gru", 3.0, "plain loop (autograd)", x_plain=None, x_lstm=None)]
    side, table = bench.variant_costs(rows)
    assert (side["x_plain"], side["x_lstm"], side["side_by_side"]) == (2.0, 1.2, True)
    assert (table["x_plain"], table["x_lstm"], table["side_by_side"]) == (1.5, 0.75, False)
    text = bench.markdown({"machine": {"cpu": "c", "cores": 2, "torch": "t", "python": "p"}, "repeats": 7,
                           "rows": rows})
    assert "| gru zoneout T8 B2 H4 | fwd | 2 |" in text and "| gru clip T8 B2 H4 * | fwd | 2 |" in text


def test_no_side_always_runs_after_the_same_one():
    seen = []
    fns = {k: (lambda k=k: seen.append(k)) for k in "abc"}
    ms = bench.interleaved_medians(fns, repeats=6, warmup=0)
    assert set(ms) == set("abc") and all(v >= 0 for v in ms.values())
    turns = ["".join(seen[i:i + 3]) for i in range(0, 18, 3)]
    assert turns == ["abc", "bca", "cab", "abc", "bca", "cab"]


def test_samples_last_at_least_min_ms_of_back_to_back_calls(monkeypatch):
    clock = [0.0]                                       # seconds; "a" costs 2 ms a call, "b" 0.5 ms
    cost = {"a": 2e-3, "b": 5e-4}
    calls = {"a": 0, "b": 0}

    def make(k):
        def f():
            calls[k] += 1
            clock[0] += cost[k]
        return f
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    ms = bench.interleaved_medians({k: make(k) for k in "ab"}, repeats=3, warmup=1, min_ms=10.0)
    assert ms == pytest.approx({"a": 2.0, "b": 0.5})
    assert calls == {"a": 1 + 3 * 5, "b": 1 + 3 * 20}   # warm-up, then 10 ms of calls per sample
    calls.update(a=0, b=0)
    bench.interleaved_medians({k: make(k) for k in "ab"}, repeats=3, warmup=1, inner=2)
    assert calls == {"a": 1 + 3 * 2, "b": 1 + 3 * 2}     # min_ms = 0: ``inner`` calls a sample


def test_sample_ms_is_recorded_and_named_in_the_table(monkeypatch):
    monkeypatch.setattr(bench, "sgemm_gflops", lambda repeats, n=bench.SGEMM_N: 1.0)
    seen = []
    monkeypatch.setattr(bench, "_bench", lambda case, repeats, sample_ms: seen.append(sample_ms) or [])
    monkeypatch.setattr(bench, "bench_cell", lambda *a: [])
    monkeypatch.setattr(bench, "bench_step", lambda *a, **k: [])
    for quick, given, used in ((True, None, bench.QUICK_SAMPLE_MS), (False, None, bench.SAMPLE_MS), (True, 0.0, 0.0)):
        seen.clear()
        result = bench.run_all(quick=quick, repeats=1, cells=("rnn",), memory=False, sample_ms=given)
        assert result["sample_ms"] == used and seen and set(seen) == {used}
    result["machine"] = {"cpu": "c", "cores": 2, "torch": "t", "python": "p"}
    assert "one call, right after another side's" in bench.markdown(result)
    result["sample_ms"] = 10.0
    assert "back-to-back calls for at least 10 ms" in bench.markdown(result)


def test_sweep_times_every_shape_against_torch_nn_and_lists_the_slower_rows(tmp_path, capsys):
    path, md = tmp_path / "sweep.json", tmp_path / "sweep.md"
    args = cli.build_parser().parse_args(["bench", "--sweep", "--quick", "--repeats", "1", "--cells", "gru,lstm,jordan",
                                          "--threads", "1", "--json", str(path), "--markdown", str(md)])
    assert bench.run(args) == 0
    rows = json.loads(path.read_text())["rows"]
    want = {(c, f"{c} T{T} B{B} H{H}", m) for c in ("gru", "lstm") for T, B, H in bench.QUICK_SWEEP_SIZES
            for m in ("fwd", "fwd+bwd")}
    assert {(r["cell"], r["case"], r["mode"]) for r in rows} == want and len(rows) == len(want)
    assert {r["baseline"] for r in rows} == {"torch.nn"} and {r["threads"] for r in rows} == {1}
    for r in rows:
        assert math.isfinite(r["ratio"]) and r["ratio"] == pytest.approx(r["baseline_ms"] / r["rnnkit_ms"])
    out = capsys.readouterr().out
    late = bench.slower(rows)
    assert f"rnnkit slower than torch.nn on {len(late)} of {len(rows)} rows" in out
    assert all(f"{r['case']} {r['mode']} 1 thread: {r['ratio']:.2f}" in out for r in late)
    assert "### 1 thread" in md.read_text()


def test_slower_rows_are_the_sequence_rows_under_one_slowest_first():
    rows = [{"mode": "fwd", "ratio": 0.9, "case": "a"}, {"mode": "fwd+bwd", "ratio": 1.2, "case": "b"},
            {"mode": "fwd+bwd", "ratio": 0.5, "case": "c"}, {"mode": "step", "ratio": 0.1, "case": "d"},
            {"mode": "fwd", "ratio": 1.0, "case": "e"}]
    assert [r["case"] for r in bench.slower(rows)] == ["c", "a"]
    assert [r["case"] for r in bench.slower(rows, below=1.1)] == ["c", "a", "e"]


def test_sweep_is_a_cpu_table():
    from rnnkit import bench_command
    args = cli.build_parser().parse_args(["bench", "--sweep", "--device", "cuda"])
    with pytest.raises(SystemExit, match="--sweep"):
        bench_command.run(args)


def test_bad_sample_ms_is_an_error():
    args = cli.build_parser().parse_args(["bench", "--quick", "--sample-ms", "-1"])
    with pytest.raises(SystemExit, match="--sample-ms"):
        bench.run(args)


def test_bad_cells_argument_is_an_error():
    args = cli.build_parser().parse_args(["bench", "--quick", "--cells", "lstm,transformer"])
    with pytest.raises(SystemExit, match="--cells"):
        bench.run(args)


# -- each row times the same work on both sides ----------------------------------------------------
@dataclass
class Side:
    """What one side of a row ran, as recorded by ``Recorder``."""

    module: Optional[nn.Module] = None   # the module called (for a stream: its model)
    x: Optional[Tensor] = None           # (T, B, I) padding zeroed, or (B, I) for a step
    lengths: Optional[Tensor] = None     # (B,) of a sequence row, full sequences included
    varlen: bool = False                 # lengths were passed (a PackedSequence or ``lengths``)
    outputs: List[Tensor] = field(default_factory=list)   # output, then every final state (L*D, B, S)
    grads: Dict[str, Tensor] = field(default_factory=dict)

    @property
    def params(self) -> Dict[str, Tensor]:
        """Parameters by name without the owner's prefix, '_l0' dropped (so that torch.nn.*Cell's
        names match a layer's)."""
        return {re.sub(r"_l0$", "", n.rsplit(".", 1)[-1]): p for n, p in self.module.named_parameters()}

    @property
    def config(self):
        """(hidden_size, num_layers, bidirectional) of the recurrent module (inside a wrapper too)."""
        m = next(m for m in self.module.modules() if hasattr(m, "hidden_size"))
        return m.hidden_size, getattr(m, "num_layers", 1), getattr(m, "bidirectional", False)


def _sequence(args):
    """(x (T, B, I) with padding zeroed, lengths (B,), whether lengths were passed) of a layer's
    positional arguments."""
    x, lengths = args[0], (args[2] if len(args) > 2 else None)
    if isinstance(x, PackedSequence):
        x, lengths = pad_packed_sequence(x)
    varlen = lengths is not None
    if lengths is None:
        lengths = torch.full((x.shape[1],), x.shape[0])
    valid = torch.arange(x.shape[0])[:, None] < lengths[None]
    return x * valid[..., None], lengths, varlen


def _outputs(result) -> List[Tensor]:
    """[output (padded), *final states as (L*D, B, S)] of a layer's or a torch.nn cell's result."""
    if isinstance(result, Tensor):                                  # nn.RNNCell, nn.GRUCell, a stream
        return [result]
    out, state = result[0], result[1]
    if isinstance(out, PackedSequence):
        out = pad_packed_sequence(out)[0]
    states = list(state) if isinstance(state, tuple) else [state]
    if out.dim() == 2 and all(s.dim() == 2 for s in states):         # nn.LSTMCell's (h, c): no stack
        return [out]
    return [out] + [s.reshape(-1, *s.shape[-2:]) for s in states]


class Recorder:
    """Stands in for ``bench.interleaved_medians``: runs every side of a row once and records it."""

    def __init__(self):
        self.calls: List[Dict[str, Side]] = []
        self._side: Optional[Side] = None

    def medians(self, fns, repeats, warmup=2, inner=1, min_ms=0.0):
        sides = {}
        for name, f in fns.items():
            self._side = sides[name] = Side()
            handle = nn.modules.module.register_module_forward_hook(self._forward)
            try:
                f()
            finally:
                handle.remove()
            sides[name].grads = {n: p.grad.clone() for n, p in sides[name].params.items() if p.grad is not None}
        self.calls.append(sides)
        return {name: 1.0 for name in fns}

    def _note(self, module, x, lengths, result, varlen=False):
        assert self._side.module is None, "a side of a row ran more than one model call"
        self._side.module, self._side.x, self._side.lengths, self._side.varlen = module, x, lengths, varlen
        self._side.outputs = [t.detach().clone() for t in _outputs(result)]

    def _forward(self, module, args, result):
        if isinstance(args[0], Tensor) and args[0].dim() == 2:     # a torch.nn cell: one step
            self._note(module, args[0], None, result)
        else:
            x, lengths, varlen = _sequence(args)
            self._note(module, x, lengths, result, varlen)

    def wrap_step(self, step):
        def recorded(model, x, hx=None):
            result = step(model, x, hx)
            self._note(model, x, None, result)
            return result
        return recorded

    def wrap_stream(self, call):
        def recorded(stream, x):
            result = call(stream, x)
            self._note(stream._model, x, None, result)
            return result
        return recorded


@pytest.fixture(scope="module")
def recorded():
    """(rows, the recorded sides of each call of the timer) of ``rnnkit bench --quick``."""
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RNNKIT_BACKEND", raising=False)                  # what a user's run picks
        mp.setattr(bench, "interleaved_medians", recorder.medians)
        mp.setattr(rnnkit.layers._Recurrent, "step", recorder.wrap_step(rnnkit.layers._Recurrent.step))
        mp.setattr(rnnkit.Stream, "__call__", recorder.wrap_stream(rnnkit.Stream.__call__))
        rows = bench.run_all(quick=True, repeats=1, memory=False)["rows"]
    return rows, recorder.calls


PLAIN_SIDES = ("plain cell", "plain lstm")        # variant rows: our plain layers, timed in the same turns


def rows_with_sides(recorded):
    """(row, sides of the timer call it came from): a call gives a row per side but one, in order
    (rnnkit's side, or for step rows the torch.nn cell's, is the one shared); the plain layers a
    variant row times beside it are not sides of the row."""
    rows, calls = recorded
    calls = [{k: v for k, v in sides.items() if k not in PLAIN_SIDES} for sides in calls]
    assert len(rows) == sum(len(sides) - 1 for sides in calls)
    it = iter(rows)
    return [(next(it), sides) for sides in calls for _ in range(len(sides) - 1)]


def test_every_side_of_every_row_ran_one_model_call(recorded):
    for row, sides in rows_with_sides(recorded):
        assert row["mode"] in ("fwd", "fwd+bwd", "step", "stream", "cell", "cell+bwd"), row
        for name, side in sides.items():
            assert side.module is not None, (row["case"], name)


def test_variant_rows_time_our_plain_layers_on_their_input(recorded):
    _, calls = recorded
    variants = [sides for sides in calls if "plain cell" in sides]
    assert len(variants) == len([sides for sides in calls if "plain loop (autograd)" in sides])
    for sides in variants:
        rk = sides["rnnkit"]
        plain = [sides[k] for k in PLAIN_SIDES if k in sides]
        assert [type(p.module) for p in plain][-1] is rnnkit.LSTM
        assert type(plain[0].module) is type(rk.module)
        for p in plain:
            assert torch.equal(p.x, rk.x) and p.module.hidden_size == rk.module.hidden_size
            assert not any(getattr(p.module, k, 0) for k in ("zoneout", "recurrent_dropout", "layer_norm",
                                                               "peephole", "proj_size", "clip_recurrent"))


def test_the_row_label_names_the_work(recorded):
    """T, B, H, layers, direction and varlen in a row's label are what both sides ran."""
    for row, sides in rows_with_sides(recorded):
        label = row["case"]
        size = {k: int(v) for k, v in re.findall(r"\b([TBHL])(\d+)\b", label)}
        for side in sides.values():
            H, layers, bidirectional = side.config
            assert (H, layers, bidirectional) == (size["H"], size.get("L", 1), " bidir" in label), label
            if row["mode"] in ("step", "stream", "cell", "cell+bwd"):
                assert tuple(side.x.shape) == (size["B"], H), label
            else:
                assert tuple(side.x.shape) == (size["T"], size["B"], H), label
                assert side.varlen == (" varlen" in label), label


def test_both_sides_run_the_same_sizes(recorded):
    for row, sides in rows_with_sides(recorded):
        first, *others = sides.values()
        for side in others:
            assert {n: p.shape for n, p in side.params.items()} == {n: p.shape for n, p in first.params.items()}
            assert side.x.shape == first.x.shape
            n = min(len(side.outputs), len(first.outputs))     # a step row's cell or stream: no states
            assert [o.shape for o in side.outputs[:n]] == [o.shape for o in first.outputs[:n]]
            assert (side.lengths is None) == (first.lengths is None)
            assert first.lengths is None or torch.equal(side.lengths, first.lengths)


def assert_same_numbers(a: Side, b: Side):
    """Same weights and input, so the same outputs and gradients (up to float32 rounding)."""
    tol = dict(atol=1e-4, rtol=1e-4)
    assert a.params.keys() == b.params.keys()
    assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)
    assert torch.equal(a.x, b.x)
    n = min(len(a.outputs), len(b.outputs))
    for u, v in zip(a.outputs[:n], b.outputs[:n]):
        torch.testing.assert_close(u, v, **tol)
    assert a.grads.keys() == b.grads.keys()
    for k in a.grads:
        torch.testing.assert_close(a.grads[k], b.grads[k], **tol)


def test_both_sides_compute_the_same_numbers(recorded):
    """Sequence rows: baseline and rnnkit on the same weights and input.  Step rows: the two rnnkit
    sides (model.step and model.stream()); the torch.nn cell's side is the known gap below."""
    for row, sides in rows_with_sides(recorded):
        if row["mode"] in ("fwd", "fwd+bwd", "cell+bwd"):
            first, *others = sides.values()
            for side in others:
                assert_same_numbers(side, first)
        elif "stream" in sides:                                        # a streaming step's rows
            assert_same_numbers(sides["stream"], sides["step"])
            assert_same_numbers(next(iter(sides.values())), sides["cell"])       # torch.nn's Cell, ours
        else:                                                          # a batched Cell's no_grad row
            assert_same_numbers(next(iter(sides.values())), sides["cell"])


def test_step_rows_torch_cell_has_the_models_weights(recorded):
    for row, sides in rows_with_sides(recorded):
        if row["mode"] == "step":
            torch_side = next(iter(sides.values()))
            assert_same_numbers(torch_side, sides["step"])


def test_fwd_bwd_rows_differentiate_the_same_leaves(recorded):
    for row, sides in rows_with_sides(recorded):
        if row["mode"] == "fwd+bwd":
            assert len({side.x.requires_grad for side in sides.values()}) == 1, row["case"]


# -- ONNX Runtime rows and the per-thread tables ---------------------------------------------------
def test_inference_rows_time_onnxruntime_or_say_why_not(monkeypatch, recorded):
    """Full-length fwd rows of the torch.nn cells have an onnxruntime side (the recorded checks above
    hold for it too: same weights, input and outputs); without onnxruntime they are left out and
    the machine record says so.  Not the variant rows: they time training-mode work (noise drawn)
    against the plain loop, which an inference export does not do."""
    rows, _ = recorded
    ort = [r for r in rows if r["baseline"] == "onnxruntime"]
    if bench._onnxruntime() is None:
        assert not ort and "not installed" in bench.machine()["onnxruntime"]
    else:
        want = {(r["case"], r["cell"]) for r in rows if r["mode"] == "fwd" and r["cell"] != "jordan"
                and "varlen" not in r["case"] and not any(f" {v} " in r["case"] for v in bench.VARIANTS)}
        assert {(r["case"], r["cell"]) for r in ort} == want and all(r["mode"] == "fwd" for r in ort)
    monkeypatch.setattr(bench, "_onnxruntime", lambda: None)
    case = bench.Case("gru", 4, 2, 3)
    assert all(r.baseline != "onnxruntime" for r in bench.bench_case(case, repeats=1))
    assert "not installed" in bench.machine()["onnxruntime"]


def test_threads_give_a_table_each(tmp_path):
    md = tmp_path / "table.md"
    args = cli.build_parser().parse_args(["bench", "--quick", "--repeats", "1", "--no-memory", "--cells", "gru",
                                          "--threads", "2,1", "--markdown", str(md), "--json", str(tmp_path / "b.json")])
    assert bench.run(args) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    rows = result["rows"]
    assert {r["threads"] for r in rows if r["mode"] in ("fwd", "fwd+bwd")} == {1, 2}
    assert {r["threads"] for r in rows if r["mode"] in ("step", "stream", "cell", "cell+bwd")
            and " step " in r["case"]} == {1}
    assert {r["threads"] for r in rows if " cell B" in r["case"]} == {1, 2}        # batched Cells: each table
    text = md.read_text()
    assert "### 2 threads" in text and "### 1 thread\n" in text and "load average" in text
    # the machine's sgemm throughput per thread count, and every sequence row's share of it
    assert set(result["sgemm"]["gflops"]) == {"1", "2"}
    assert all(math.isfinite(v) and v > 0 for v in result["sgemm"]["gflops"].values())
    assert text.count("sgemm (torch.mm") == 2
    shares = [line.rstrip(" |").rsplit("| ", 1)[1] for line in text.splitlines() if line.startswith("| gru T")]
    seq = [r for n in (2, 1) for r in rows if r["mode"] in ("fwd", "fwd+bwd") and r["threads"] == n
           and r["case"].startswith("gru T")]
    assert shares == [f"{r['rnnkit_gflops'] / result['sgemm']['gflops'][str(r['threads'])]:.0%}" for r in seq]
    with pytest.raises(SystemExit, match="--threads"):
        bench.run(cli.build_parser().parse_args(["bench", "--quick", "--threads", "0"]))


def test_onnxruntime_threads_do_not_spin_after_a_run():
    """ORT's pool threads spinning after a run would take the cores from the next side timed."""
    if bench._onnxruntime() is None:
        pytest.skip("onnxruntime is not installed")
    model = bench.OrtModel(rnnkit.GRU(4, 4), threads=2)
    assert model.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
