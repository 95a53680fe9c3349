"""rnnkit.export_onnx and ``rnnkit export``: the exported graphs run in onnxruntime and give
rnnkit's numbers (and torch.nn's, for the cells torch.nn has), float32.

The matrix reads the cell registry: every form x {forward, bidirectional} x {1, 2 layers} x
{full, variable lengths}, with initial states as inputs.  Options (batch_first, bias=False,
zeros as initial state, fixed sizes, dynamic sizes, a head with each read-out, token ids) and
bad input (a clear error naming the argument, nothing written) have their own tests.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install 'rnnkit[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="checking the export needs onnxruntime (pip install onnxruntime)")

import rnnkit  # noqa: E402
from rnnkit import export  # noqa: E402
from rnnkit.export import export_onnx  # noqa: E402

from helpers import (FORMS, INPUT_SIZE, TORCH_CELLS, assert_all_close, make, make_torch_pair,  # noqa: E402
                     randn, random_state)

T, B = 5, 3
F32 = torch.float32
LENGTHS = {"full": None, "variable": [5, 1, 3]}


def _writable(form: str) -> bool:
    """Whether the exporter has an ONNX form for every option of this form (others are refused)."""
    used = set(make(form, dtype=F32).cell.options()) - export._EVAL_FREE
    return used <= export._SCAN_OPTIONS | export._NATIVE_OPTIONS


EXPORTABLE = [f for f in FORMS if _writable(f)]
REFUSED = [f for f in FORMS if not _writable(f)]


@pytest.mark.parametrize("form", REFUSED or [pytest.param(None, marks=pytest.mark.skip(reason="every form exports"))])
def test_forms_without_an_onnx_form_are_refused_by_name(form, tmp_path):
    """Options the exporter does not write yet (e.g. layer_norm) are a clear error, nothing written."""
    model = make(form, dtype=F32)
    unknown = sorted(set(model.cell.options()) - export._EVAL_FREE - export._SCAN_OPTIONS - export._NATIVE_OPTIONS)
    with pytest.raises(ValueError, match=unknown[0]):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def run_ort(path, **feeds):
    """Outputs of the exported model (by name) on numpy copies of the feeds."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    arrays = {k: (v.detach().numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in feeds.items()}
    return [torch.from_numpy(a) for a in session.run(None, arrays)]


def state_feeds(model, state) -> dict:
    """{'h0': .., 'c0': ..} (or 'y0') from a state in the layer's own format."""
    return {f"{n}0": s for n, s in zip(model.cell.state_names, model.unpack_state(state))}


def ours(model, x, state, lengths):
    with torch.no_grad():
        out, final = model(x, state, lengths=lengths)
    return [out, *model.unpack_state(final)]


def export_and_run(model, tmp_path, x, state, lengths, **kw):
    path = tmp_path / "model.onnx"
    export_onnx(model, path, lengths=lengths is not None, **kw)
    feeds = {"input": x, **state_feeds(model, state)}
    if lengths is not None:
        feeds["lengths"] = torch.tensor(lengths)
    return run_ort(path, **feeds)


# -- every form, as rnnkit computes it --------------------------------------------------------------
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("form", EXPORTABLE)
def test_matches_rnnkit(form, bidirectional, num_layers, lengths, tmp_path):
    model = make(form, dtype=F32, num_layers=num_layers, bidirectional=bidirectional).eval()
    x, state, n = randn(T, B, INPUT_SIZE, dtype=F32), random_state(model, B), LENGTHS[lengths]
    assert_all_close(export_and_run(model, tmp_path, x, state, n), ours(model, x, state, n), F32)


# Layer options that ONNX's RNN / LSTM / GRU operators cannot express (a Scan computes those forms).
NOT_IN_ONNX_OPS = ("proj_size", "zoneout", "layer_norm")


@pytest.mark.parametrize("form", EXPORTABLE)
def test_one_operator_per_layer_as_the_registry_says(form, tmp_path):
    """Cells with a torch.nn twin are ONNX's own operator (named as the twin), one node per layer
    with both directions, unless an option needs more; the others a Scan per layer and direction."""
    entry, kw = FORMS[form]
    model = make(form, dtype=F32, num_layers=2, bidirectional=True)
    ops = [n.op_type for n in export_onnx(model, tmp_path / "m.onnx").graph.node]
    if entry.torch_twin is not None and not any(kw.get(k) for k in NOT_IN_ONNX_OPS):
        assert ops.count(entry.torch_twin.__name__) == 2 and "Scan" not in ops
    else:
        assert ops.count("Scan") == 4


@pytest.mark.parametrize("form", EXPORTABLE)
def test_scan_steps_match_rnnkit_for_every_cell(form, monkeypatch, tmp_path):
    """The Scan form of every cell (forced for those ONNX has an operator for), both directions,
    two layers, variable lengths."""
    monkeypatch.setattr(export, "_GATE_ORDER", {})
    model = make(form, dtype=F32, num_layers=2, bidirectional=True).eval()
    x, state, n = randn(T, B, INPUT_SIZE, dtype=F32), random_state(model, B), LENGTHS["variable"]
    assert_all_close(export_and_run(model, tmp_path, x, state, n), ours(model, x, state, n), F32)
    assert "Scan" in {node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node}


def test_gru_forms_are_linear_before_reset(tmp_path):
    """torch's GRU is linear_before_reset=1, Cho's original form 0."""
    for form, expected in (("gru", 1), ("gru_cho", 0)):
        node = next(n for n in export_onnx(make(form, dtype=F32), tmp_path / "m.onnx").graph.node if n.op_type == "GRU")
        assert {a.name: a.i for a in node.attribute}["linear_before_reset"] == expected


# -- the standard cells against torch.nn, the same weights ---------------------------------------
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("form", list(TORCH_CELLS))
def test_matches_torch_nn(form, bidirectional, num_layers, lengths, tmp_path):
    ref, model = make_torch_pair(form, backend="reference", dtype=F32, num_layers=num_layers,
                                 bidirectional=bidirectional)
    x, state, n = randn(T, B, INPUT_SIZE, dtype=F32), random_state(model, B), LENGTHS[lengths]
    with torch.no_grad():
        if n is None:
            out, final = ref(x, state)
        else:
            packed, final = ref(pack_padded_sequence(x, torch.tensor(n), enforce_sorted=False), state)
            out = pad_packed_sequence(packed, total_length=T)[0]
    expected = [out, *(final if isinstance(final, tuple) else (final,))]
    assert_all_close(export_and_run(model, tmp_path, x, state, n), expected, F32)


# -- options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["lstm", "gru_cho", "jordan_softmax"])
def test_batch_first_no_bias_and_zero_initial_state(form, tmp_path):
    model = make(form, dtype=F32, num_layers=2, bidirectional=True, batch_first=True, bias=False)
    x, n = randn(B, T, INPUT_SIZE, dtype=F32), [2, 5, 4]
    path = tmp_path / "m.onnx"
    export_onnx(model, path, lengths=True, initial_state=False)
    got = run_ort(path, input=x, lengths=torch.tensor(n))
    assert_all_close(got, ours(model, x, None, n), F32)


@pytest.mark.parametrize("form", ["lstm", "jordan_tanh"])
def test_dynamic_axes_take_any_batch_and_length(form, tmp_path):
    model = make(form, dtype=F32, bidirectional=True)
    path = tmp_path / "m.onnx"
    proto = export_onnx(model, path, lengths=True)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["time", "batch", INPUT_SIZE]
    for t, b in ((2, 1), (7, 4)):
        x, state, n = randn(t, b, INPUT_SIZE, dtype=F32), random_state(model, b), list(range(t, t - b, -1))
        n = [max(v, 1) for v in n]
        got = run_ort(path, input=x, lengths=torch.tensor(n), **state_feeds(model, state))
        assert_all_close(got, ours(model, x, state, n), F32)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_fixed_sizes_come_from_the_example(batch_first, tmp_path):
    model = make("gru", dtype=F32, batch_first=batch_first)
    shape = (B, T, INPUT_SIZE) if batch_first else (T, B, INPUT_SIZE)
    x, state = randn(*shape, dtype=F32), random_state(model, B)
    path = tmp_path / "m.onnx"
    proto = export_onnx(model, path, example=x, dynamic=False)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == list(shape)
    assert_all_close(run_ort(path, input=x, **state_feeds(model, state)), ours(model, x, state, None), F32)
    with pytest.raises(Exception, match="dimension"):
        run_ort(path, input=randn(*shape[:2], INPUT_SIZE, dtype=F32)[:, :2], **state_feeds(model, state))


@pytest.mark.parametrize("readout", ["all", "last"])
@pytest.mark.parametrize("form", ["gru", "jordan_identity"])
def test_head_and_readout(form, readout, tmp_path):
    """readout 'last': forward features at each sequence's last step, reverse features at step 0
    (as rnnkit.train's network reads them), then the head."""
    model = make(form, dtype=F32, bidirectional=True, batch_first=True)
    S = model.cell.out_size
    torch.manual_seed(3)
    head = nn.Linear(2 * S, 2)
    x, state, n = randn(B, T, INPUT_SIZE, dtype=F32), random_state(model, B), [3, 5, 1]
    out, *finals = ours(model, x, state, n)
    if readout == "last":
        out = torch.cat([out[torch.arange(B), torch.tensor(n) - 1, :S], out[:, 0, S:]], dim=-1)
    with torch.no_grad():
        expected = [head(out), *finals]
    path = tmp_path / "m.onnx"
    export_onnx(model, path, lengths=True, head=head, readout=readout)
    got = run_ort(path, input=x, lengths=torch.tensor(n), **state_feeds(model, state))
    assert_all_close(got, expected, F32)


def test_token_ids_are_one_hot(tmp_path):
    V = INPUT_SIZE
    model = make("lstm", dtype=F32, batch_first=True)
    ids = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "m.onnx"
    export_onnx(model, path, tokens=V, initial_state=False)
    got = run_ort(path, input=ids)
    assert_all_close(got, ours(model, nn.functional.one_hot(ids, V).to(F32), None, None), F32)


def test_package_exports_it():
    assert rnnkit.export_onnx is export_onnx and "export_onnx" in rnnkit.__all__


# -- bad input: a clear error, nothing written --------------------------------------------------------
BAD = {
    "not an rnnkit layer": (lambda m: dict(model=nn.LSTM(3, 4)), TypeError, ["model", "rnnkit layer", "LSTM"]),
    "path": (lambda m: dict(path=3), TypeError, ["path", "os.PathLike", "int"]),
    "opset too old": (lambda m: dict(opset=9), ValueError, ["opset", "[13,", "9"]),
    "opset not an int": (lambda m: dict(opset="17"), ValueError, ["opset", "'17'"]),
    "dynamic": (lambda m: dict(dynamic="yes"), TypeError, ["dynamic", "True or False", "'yes'"]),
    "fixed without example": (lambda m: dict(dynamic=False), ValueError, ["example", "dynamic=False", "None"]),
    "example shape": (lambda m: dict(example=torch.zeros(T, B, 7)), ValueError, ["example", "(3,)", "(5, 3, 7)"]),
    "example dtype": (lambda m: dict(example=torch.zeros(T, B, 3, dtype=torch.float64)), ValueError,
                      ["example", "float32", "float64"]),
    "readout": (lambda m: dict(readout="mean", head=nn.Linear(4, 1)), ValueError, ["readout", "'last'", "'mean'"]),
    "readout without head": (lambda m: dict(readout="last"), ValueError, ["readout", "without a head", "'last'"]),
    "head type": (lambda m: dict(head=nn.ReLU()), TypeError, ["head", "Linear", "ReLU"]),
    "head size": (lambda m: dict(head=nn.Linear(5, 1)), ValueError, ["head", "in_features 4", "got 5"]),
    "tokens": (lambda m: dict(tokens=7), ValueError, ["tokens", "input_size 3", "7"]),
    "dtype": (lambda m: dict(model=m.to(torch.bfloat16)), TypeError, ["model", "float32", "bfloat16"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_error_and_writes_nothing(case, tmp_path):
    change, error, words = BAD[case]
    args = dict(model=make("lstm", dtype=F32), path=tmp_path / "m.onnx")
    args.update(change(args["model"]))
    model, path = args.pop("model"), args.pop("path")
    with pytest.raises(error) as info:
        export_onnx(model, path, **args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert os.listdir(tmp_path) == []


def test_a_cell_without_onnx_form_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(export, "_SCAN_STEPS", {})
    with pytest.raises(ValueError, match="cell 'jordan'"):
        export_onnx(make("jordan_tanh", dtype=F32), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_an_option_the_export_does_not_know_is_named(monkeypatch, tmp_path):
    model = make("gru", dtype=F32)
    monkeypatch.setattr(model.cell, "options", lambda: {"reset_after": "1", "mystery": "0.5"})
    with pytest.raises(ValueError, match="options among .* got mystery=0.5"):
        export_onnx(model, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_a_failure_late_in_the_export_keeps_the_old_file(monkeypatch, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(make("gru", dtype=F32), path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]


def test_missing_onnx_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    with pytest.raises(ImportError, match=r"rnnkit\[onnx\]"):
        export_onnx(make("gru", dtype=F32), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


# -- rnnkit export RUN --onnx FILE ----------------------------------------------------------------
TINY_RUNS = {
    "forecast, LSTM": {"task": "sunspots", "window": 6},
    "classify, bidirectional GRU": {"task": "digits", "cell": "gru", "bidirectional": True, "batch_size": 256},
    "text, Jordan": {"task": "text", "cell": "jordan", "k1": 8, "batch_size": 4, "layers": 2},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from rnnkit.train import resolve, train
    root = tmp_path_factory.mktemp("runs")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    torch.set_num_threads(1)
    for name, options in TINY_RUNS.items():
        text = {"text": str(root / "corpus.txt")} if options["task"] == "text" else {}
        train(resolve({"hidden": 6, "epochs": 1, "plots": False, "progress": False, "tensorboard": False,
                       "out": str(root / name.replace(", ", "-").replace(" ", "_")), **text, **options}))
    return root


@pytest.mark.parametrize("name", list(TINY_RUNS))
def test_export_command_writes_the_runs_network(name, runs, tmp_path, capsys):
    from rnnkit import cli, export_cli
    run = runs / name.replace(", ", "-").replace(" ", "_")
    path = tmp_path / "net.onnx"
    assert cli.main(["export", str(run), "--onnx", str(path), "--lengths"]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    net = export_cli.load_net(str(run))
    if net.tokens:
        x = torch.randint(net.tokens, (2, 7), generator=torch.Generator().manual_seed(0))
    else:
        x = randn(2, 7, net.rnn.input_size, dtype=F32)
    n = [7, 4]
    state = tuple(randn(*s.shape, dtype=F32, seed=5) for s in net.rnn.unpack_state(net(x)[1]))
    with torch.no_grad():
        out, final = net(x, torch.tensor(n) if net.readout == "last" else None, net.rnn.pack_state(state))
    feeds = {"input": x, **state_feeds(net.rnn, net.rnn.pack_state(state))}
    feeds["lengths"] = torch.tensor(n if net.readout == "last" else [7, 7])
    assert_all_close(run_ort(path, **feeds), [out, *net.rnn.unpack_state(final)], F32)


def test_export_command_errors_are_one_line(runs, tmp_path, capsys):
    from rnnkit import cli
    run = runs / "forecast-LSTM"
    assert cli.main(["export", str(runs / "nothing"), "--onnx", str(tmp_path / "a.onnx")]) == 2
    assert cli.main(["export", str(run), "--onnx", str(tmp_path / "b.onnx"), "--opset", "3"]) == 2
    assert cli.main(["export", str(run), "--onnx", str(tmp_path / "no" / "c.onnx")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("rnnkit export: ") for line in err)
    assert "opset" in err[1] and os.listdir(tmp_path) == []


LN_CASES = [("lstm", dict(layer_norm=True)), ("lstm", dict(layer_norm=True, peephole=True)),
            ("lstm", dict(layer_norm=True, proj_size=3)), ("lstm", dict(layer_norm=True, bias=False)),
            ("gru", dict(layer_norm=True)), ("gru", dict(layer_norm=True, bias=False))]


@pytest.mark.parametrize("opset", [13, export.DEFAULT_OPSET, 18])
@pytest.mark.parametrize("cell, kw", LN_CASES, ids=lambda v: v if isinstance(v, str) else ",".join(v))
def test_layer_norm_scan_matches_rnnkit_with_trained_gains(cell, kw, opset, tmp_path):
    """Layer-normalised LSTM/GRU as a Scan: gains and biases away from their initial 1 and 0 (a
    graph that ignored them would still match an untrained model), both directions, two layers,
    variable lengths; ReduceMean's two signatures (attribute before opset 18, input since)."""
    if opset > onnx.defs.onnx_opset_version():
        pytest.skip(f"this onnx writes opset {onnx.defs.onnx_opset_version()} at most")
    torch.manual_seed(3)
    model = rnnkit.LSTM(INPUT_SIZE, 5, num_layers=2, bidirectional=True, **kw) if cell == "lstm" else \
        rnnkit.GRU(INPUT_SIZE, 5, num_layers=2, bidirectional=True, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_ln_" in name:
                p.copy_(torch.rand_like(p) * 1.5 + 0.25 if name.startswith("weight") else torch.randn_like(p))
    x = torch.randn(5, 3, INPUT_SIZE)
    lengths = LENGTHS["variable"]
    state = tuple(torch.randn(4, 3, s) for s in model.cell.state_sizes())
    state = state if cell == "lstm" else state[0]
    got = export_and_run(model, tmp_path, x, state, lengths, opset=opset)
    assert_all_close(got, ours(model, x, state, torch.tensor(lengths)), dtype=F32)
