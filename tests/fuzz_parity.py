"""Random configurations against torch.nn: forward, backward, double backward, step, stream and
torch.compile, after random parameter surgery (pruning, weight_norm, rebinding a Parameter, a
wrong-shaped ``.data`` that must be an error).

Run as a script (a crash is then a dead process, which the test that calls it reports):

    python tests/fuzz_parity.py --n 500 --seed 0 [--compile aot_eager] [--inductor-every 25]

``--compile aot_eager`` (the default) compiles every configuration with dynamo and AOTAutograd
but no code generation: it checks that the layer traces without a graph break (``fullgraph=True``;
a PackedSequence input, whose packing is data-dependent, may break the graph: then
``fullgraph=False``), the operators' fake implementations and their registered autograd;
``--inductor-every k`` also compiles every k-th configuration with inductor (C++ code generation).
The compiled module's outputs and gradients must equal torch.nn's eager ones.  Measured at
1bd6923 (``--n 500 --seed 0 --inductor-every 25``, nice 10, one thread, on 2 shared cores at a
load average of 5-6): 1494 s in all, of which 1223 s for 419 aot_eager compiles (2.9 s each)
and 258 s for 17 inductor compiles (15 s each); 0 failures.

Prints one JSON line of counts; exits 1 on any disagreement or unexpected exception.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import traceback

import torch
import torch.nn.utils.parametrizations
import torch.nn.utils.prune
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit import backends

TWINS = {"rnn": (nn.RNN, rnnkit.Elman), "lstm": (nn.LSTM, rnnkit.LSTM), "gru": (nn.GRU, rnnkit.GRU)}
HAND = [n for n in ("cpu", "reference", "autograd") if backends.get(n).available()]
TOL = {torch.float64: dict(atol=1e-9, rtol=1e-9), torch.float32: dict(atol=2e-5, rtol=2e-5)}


def config(rng: random.Random) -> dict:
    cell = rng.choice(list(TWINS))
    c = dict(cell=cell, I=rng.randint(1, 6), H=rng.randint(1, 6), L=rng.randint(1, 3),
             bidirectional=rng.random() < 0.4, batch_first=rng.random() < 0.5, bias=rng.random() < 0.8,
             T=rng.randint(1, 6), B=rng.choice([0, 1, 2, 3, 4]), hx=rng.random() < 0.5,
             packed=rng.random() < 0.3, dtype=rng.choice(["float64", "float64", "float32"]),
             backend=rng.choice(HAND), surgery=rng.choice(["none", "none", "prune", "weight_norm", "rebind", "resize"]))
    if cell == "rnn":
        c["nonlinearity"] = rng.choice(["tanh", "relu"])
    if c["B"] == 0:
        c["packed"] = False
    return c


def build(c: dict, seed: int):
    dtype = getattr(torch, c["dtype"])
    kw = dict(num_layers=c["L"], bidirectional=c["bidirectional"], batch_first=c["batch_first"], bias=c["bias"],
              dtype=dtype, **({"nonlinearity": c["nonlinearity"]} if "nonlinearity" in c else {}))
    torch.manual_seed(seed)
    ref = TWINS[c["cell"]][0](c["I"], c["H"], **kw)
    ours = TWINS[c["cell"]][1](c["I"], c["H"], backend=c["backend"], **kw)
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def surgery(c: dict, ref: nn.Module, ours: nn.Module, seed: int) -> bool:
    """Apply the same change to both; returns False when rnnkit must refuse to run (wrong shape)."""
    name = "weight_hh_l0"
    if c["surgery"] == "prune":
        for m in (ref, ours):
            torch.manual_seed(seed)
            torch.nn.utils.prune.random_unstructured(m, name, amount=0.5)
    elif c["surgery"] == "weight_norm":
        for m in (ref, ours):
            torch.nn.utils.parametrizations.weight_norm(m, name)
        ours.load_state_dict(ref.state_dict())
    elif c["surgery"] == "rebind":
        new = torch.randn_like(getattr(ref, name), generator=torch.Generator().manual_seed(seed))
        setattr(ref, name, nn.Parameter(new.clone()))
        setattr(ours, name, nn.Parameter(new.clone()))
    elif c["surgery"] == "resize":
        ours.weight_hh_l0.data = torch.randn(getattr(ours, name).shape[0] + 1, c["H"], dtype=getattr(torch, c["dtype"]))
        return False
    return True


def inputs(c: dict, seed: int):
    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, c["dtype"])
    D = 2 if c["bidirectional"] else 1
    shape = (c["B"], c["T"], c["I"]) if c["batch_first"] else (c["T"], c["B"], c["I"])
    x = torch.randn(*shape, dtype=dtype, generator=g, requires_grad=True)
    hx = None
    if c["hx"]:
        hs = [torch.randn(D * c["L"], c["B"], c["H"], dtype=dtype, generator=g, requires_grad=True)
              for _ in range(2 if c["cell"] == "lstm" else 1)]
        hx = tuple(hs) if c["cell"] == "lstm" else hs[0]
    lengths = None
    if c["packed"]:
        lengths = torch.randint(1, c["T"] + 1, (c["B"],), generator=g)
    return x, hx, lengths


def run(model, c, x, hx, lengths):
    arg = pack_padded_sequence(x, lengths, batch_first=c["batch_first"], enforce_sorted=False) if lengths is not None else x
    out, h = model(arg, hx)
    if lengths is not None:
        out = pad_packed_sequence(out, batch_first=c["batch_first"], total_length=c["T"])[0]
    return [out, *(h if isinstance(h, tuple) else (h,))]


def leaves(model, x, hx):
    hs = [] if hx is None else list(hx if isinstance(hx, tuple) else (hx,))
    return [x, *hs, *[p for p in model.parameters() if p.requires_grad]]


def close(a, b, dtype, what):
    for k, (u, v) in enumerate(zip(a, b)):
        if u is None and v is None:
            continue
        u = torch.zeros_like(v) if u is None else u
        v = torch.zeros_like(u) if v is None else v
        torch.testing.assert_close(u, v, **TOL[dtype], msg=lambda m, k=k: f"{what} tensor {k}: {m}")


def check(c: dict, seed: int, compilers: list, counts: dict) -> None:
    ref, ours = build(c, seed)
    dtype = getattr(torch, c["dtype"])
    if not surgery(c, ref, ours, seed):
        refused(c, ours, seed)
        counts["refused"] += 1
        return
    x, hx, lengths = inputs(c, seed)
    a, b = run(ours, c, x, hx, lengths), run(ref, c, x, hx, lengths)
    close(a, b, dtype, "forward")
    counts["forward"] += 1
    cot = [torch.randn(t.shape, dtype=dtype, generator=torch.Generator().manual_seed(seed + 1)) for t in a]
    ga = torch.autograd.grad(a, leaves(ours, x, hx), cot, allow_unused=True, create_graph=dtype == torch.float64)
    gb = torch.autograd.grad(b, leaves(ref, x, hx), cot, allow_unused=True, create_graph=dtype == torch.float64)
    close(ga, gb, dtype, "backward")
    counts["backward"] += 1
    if dtype == torch.float64 and ga[0] is not None and gb[0] is not None and ga[0].requires_grad:
        pa = torch.autograd.grad(ga[0].pow(2).sum(), leaves(ours, x, hx)[1:], allow_unused=True)
        pb = torch.autograd.grad(gb[0].pow(2).sum(), leaves(ref, x, hx)[1:], allow_unused=True)
        close(pa, pb, dtype, "double backward")
        counts["double_backward"] += 1
    if not c["bidirectional"] and lengths is None and c["B"] > 0:
        steps(c, ours, x, hx, b, dtype, counts)
    for compiler in compilers:
        start = time.perf_counter()
        compiled_run(c, ours, compiler, x, hx, lengths, b, cot, gb, dtype)
        counts["compile_" + compiler] += 1
        counts["seconds"]["compile_" + compiler] += time.perf_counter() - start


def compiled_run(c, ours, compiler, x, hx, lengths, expected, cot, expected_grads, dtype) -> None:
    """The compiled module's outputs and first-order gradients against torch.nn's eager ones."""
    torch._dynamo.reset()                       # a fresh cache: each configuration is a new module
    compiled = torch.compile(ours, fullgraph=lengths is None, backend=compiler)
    a = run(compiled, c, x, hx, lengths)
    close(a, expected, dtype, f"compile ({compiler})")
    grads = torch.autograd.grad(a, leaves(ours, x, hx), cot, allow_unused=True)
    close(grads, [g.detach() if g is not None else None for g in expected_grads], dtype, f"compile ({compiler}) backward")


def refused(c, ours, seed) -> None:
    """Every entry point refuses a wrong-shaped weight_hh_l0 with an error naming it."""
    x, hx, lengths = inputs(c, seed)
    x0 = (x[:, 0] if c["batch_first"] else x[0]).detach()
    attempts = [lambda: run(ours, c, x, hx, lengths)]
    if not c["bidirectional"] and c["B"] > 0:
        attempts += [lambda: ours.step(x0), lambda: ours.stream(c["B"])(x0)]
    for attempt in attempts:
        try:
            with torch.no_grad():
                attempt()
        except RuntimeError as e:
            if "weight_hh_l0" not in str(e):
                raise
        else:
            raise AssertionError("a wrong-shaped weight_hh_l0 ran without an error")


def steps(c, ours, x, hx, expected, dtype, counts):
    """model.step over every time step and a stream, against torch.nn's forward."""
    xs = x.unbind(1 if c["batch_first"] else 0)
    want = expected[0].unbind(1 if c["batch_first"] else 0)
    state = hx
    for t, x_t in enumerate(xs):
        y, state = ours.step(x_t, state)
        close([y], [want[t]], dtype, f"step {t}")
    counts["step"] += 1
    with torch.no_grad():
        stream = ours.stream(c["B"], None if hx is None else (tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach()))
        for t, x_t in enumerate(xs):
            close([stream(x_t.detach())], [want[t].detach()], dtype, f"stream {t}")
    counts["stream"] += 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", default="aot_eager", choices=["aot_eager", "none"],
                   help="compile every configuration with this torch.compile backend")
    p.add_argument("--inductor-every", type=int, default=0, help="also inductor, every k-th configuration (0: never)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)     # a packed input's expected graph break
    rng = random.Random(args.seed)
    counts = dict(configs=0, forward=0, backward=0, double_backward=0, step=0, stream=0, compile_aot_eager=0,
                  compile_inductor=0, refused=0, failures=0, seconds=dict(all=0.0, compile_aot_eager=0.0,
                                                                          compile_inductor=0.0))
    start = time.perf_counter()
    for i in range(args.n):
        c = config(rng)
        try:
            compilers = ([] if args.compile == "none" else [args.compile]) \
                + (["inductor"] if args.inductor_every and i % args.inductor_every == 0 else [])
            check(c, args.seed * 100003 + i, compilers, counts)
        except Exception:                                          # noqa: BLE001 - reported, then counted
            counts["failures"] += 1
            print(json.dumps({"config": c, "index": i}), file=sys.stderr)
            traceback.print_exc()
        counts["configs"] += 1
    counts["seconds"] = {k: round(time.perf_counter() - start if k == "all" else v, 1)
                         for k, v in counts["seconds"].items()}
    print(json.dumps(counts))
    return 1 if counts["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
