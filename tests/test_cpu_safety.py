"""Nothing handed to the fused CPU kernels is trusted (rnnkit/csrc/check.h): every argument of
every entry point -- forward, backward, step, Stepper (constructor, step, set_state, set_params),
and the parameters a Stepper holds -- is mutated one at a time (rank, each size, dtype, device,
layout, None, list length; the held parameters through ``p.data = ...``), and through the layers
the parameters are rebound, resized, converted, made non-contiguous, pruned and parametrized
before forward, backward, step and stream.  Every case must end in

  * a clear error: RuntimeError, TypeError or ValueError whose message names the argument (or,
    for the argument that fixes the sizes, one of the arguments that disagree with it), or
  * a correct result: the reference backend's (the Python loop) on the same arguments -- which
    must then accept them too.

A crash is neither: each group runs in a subprocess (this file run as a script), so that a
segfault is a failed test naming the case that was running, not a dead suite.

    python tests/test_cpu_safety.py GROUP [--n N] [--seed S]     GROUP: extension | held | layers | random

prints ``start <case>`` (flushed) before each case, then one JSON line of counts; exits 1 on a
wrong outcome.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))       # helpers, when run as a script

from helpers import CELLS, make  # noqa: E402

from rnnkit.backends import cpu, reference  # noqa: E402
from rnnkit.sequence import step_stack  # noqa: E402

ALLOWED = (RuntimeError, TypeError, ValueError)
ENDINGS = {"error": 0, "result": 0}            # how the cases that ended well ended
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
GROUPS = ("extension", "held", "layers", "random")


def kernel_forms() -> List[str]:
    """The forms the fused kernels run (the others are declined by ``supports``)."""
    if cpu.extension() is None:
        return []
    return [f for f in CELLS if cpu.BACKEND.supports(make(f).cell, torch.device("cpu"), torch.float64)]


# -- mutations of one argument ---------------------------------------------------------------------
def noncontiguous(t):
    """The same values in a non-contiguous layout (every other element of a larger tensor)."""
    if t.dim() == 0:
        return t
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype)
    big[..., 1::2] = t
    return big[..., 1::2]


def transposed(t):
    """The same values with the dims' order reversed in memory (column-major for a matrix)."""
    if t.dim() < 2:
        return t
    dims = list(reversed(range(t.dim())))
    return t.permute(dims).contiguous().permute(dims)


def mutations(t, rng: random.Random):
    """(label, value) for one tensor argument: each a different kind of wrong or unusual value."""
    yield "rank+1", t.unsqueeze(0)
    if t.dim() >= 1:
        yield "rank-1", t.select(0, 0) if t.shape[0] else t.sum(0)
    for k in range(t.dim()):
        grown = list(t.shape)
        grown[k] += rng.choice([1, 2, 5])
        yield f"size{k}+", (torch.rand(grown) < 0.5) if t.dtype == torch.bool else torch.randn(grown).to(t.dtype)
        if t.shape[k]:
            yield f"size{k}-", t.narrow(k, 0, t.shape[k] - 1)
    other = torch.float32 if t.dtype == torch.float64 else torch.float64
    yield "dtype", t.to(other)
    yield "int", t.long()
    yield "half", t.half()
    yield "meta", t.to("meta")
    yield "noncontiguous", noncontiguous(t)
    yield "transposed", transposed(t)
    if t.dim() and t.shape[0]:
        yield "expanded", t[:1].expand(t.shape)
    yield "none", None
    yield "number", 3.0


# -- the entry points as named slots ----------------------------------------------------------------
class Case:
    """One call of an entry point, its arguments as named slots (so that one can be replaced).

    slots     name -> value ("rec[0]", "state0[1]", ...: lists are split into their entries)
    lists     list name -> its slot names, in order (a list's length can be mutated too)
    anchor    the slot that fixes the sizes the others are checked against
    """

    def __init__(self, entry: str, cell, spec, slots: Dict, lists: Dict[str, List[str]], anchor: str,
                 names: Optional[Dict[str, str]] = None):
        self.entry, self.cell, self.spec, self.slots, self.lists, self.anchor = entry, cell, spec, slots, lists, anchor
        self.names = names or {}          # slot -> the name messages use (weight_hh for rec[0], ...)

    def value(self, name):
        if name in self.lists:
            return [self.slots[s] for s in self.lists[name]]
        return self.slots[name]

    def replaced(self, slot: str, value) -> "Case":
        c = copy.copy(self)
        c.slots = dict(self.slots)
        c.slots[slot] = value
        return c

    def resized(self, lst: str, n: int) -> "Case":
        """The list ``lst`` cut to n entries, or extended by repeating its last."""
        c = copy.copy(self)
        c.slots, c.lists = dict(self.slots), dict(self.lists)
        names = self.lists[lst]
        if n <= len(names):
            c.lists[lst] = names[:n]
        else:
            extra = [f"{lst}[+{i}]" for i in range(n - len(names))]
            for e in extra:
                c.slots[e] = self.slots[names[-1]] if names else torch.zeros(1)
            c.lists[lst] = names + extra
        return c

    def message_names(self) -> List[str]:
        return [self.names.get(s, s) for s in list(self.slots) + list(self.lists)]


def forward_case(form: str, dtype, T=3, B=2, lengths=True, rng=None) -> Case:
    model = make(form, dtype=dtype)
    cell = model.cell
    g = torch.Generator().manual_seed(0)
    H = cell.hidden_size
    xp = torch.randn(T, B, cell.n_gates * H, dtype=dtype, generator=g)
    state0 = [torch.randn(B, s, dtype=dtype, generator=g) for s in cell.state_sizes()]
    rec = [getattr(model, n + "_l0").detach() for n in cell.rec_params]
    mask = None
    if lengths:
        lens = torch.tensor([T] + [max(1, T - 1 - b) for b in range(B - 1)])[:B]
        mask = (torch.arange(T)[:, None] < lens[None, :]).unsqueeze(-1)
    slots = {"xp": xp, "mask": mask}
    slots.update({f"state0[{k}]": s for k, s in enumerate(state0)})
    slots.update({f"rec[{k}]": p for k, p in enumerate(rec)})
    lists = {"state0": [f"state0[{k}]" for k in range(len(state0))], "rec": [f"rec[{k}]" for k in range(len(rec))]}
    names = {f"rec[{k}]": n for k, n in enumerate(cell.rec_params)}
    return Case("forward", cell, cpu.BACKEND._spec(cell), slots, lists, "xp", names)


def backward_case(form: str, dtype, T=3, B=2, lengths=True) -> Case:
    f = forward_case(form, dtype, T, B, lengths)
    states, saved = reference.forward(f.cell, f.value("xp"), f.value("mask"), tuple(f.value("state0")),
                                      tuple(f.value("rec")), True)
    g = torch.Generator().manual_seed(1)
    slots = {k: v for k, v in f.slots.items() if k != "xp"}
    slots["d_out"] = torch.randn(states[0].shape, dtype=dtype, generator=g)
    lists = dict(f.lists)
    for name, ts in (("states", states), ("saved", saved)):
        slots.update({f"{name}[{k}]": t for k, t in enumerate(ts)})
        lists[name] = [f"{name}[{k}]" for k in range(len(ts))]
    d_final = [torch.randn(s.shape[1:], dtype=dtype, generator=g) for s in states]
    slots.update({f"d_final[{k}]": d for k, d in enumerate(d_final)})
    lists["d_final"] = [f"d_final[{k}]" for k in range(len(d_final))]
    return Case("backward", f.cell, f.spec, slots, lists, "states[0]", f.names)


def layers_slots(model, cell, L):
    slots, lists, names = {}, {}, {}
    for layer in range(L):
        keys = []
        for n in ("weight_ih", "bias_ih") + cell.rec_params:
            key = f"{n}_l{layer}"
            slots[key] = getattr(model, key).detach()
            keys.append(key)
        lists[f"layers[{layer}]"] = keys
    return slots, lists, names


def step_case(form: str, dtype, B=2, L=2, entry="step") -> Case:
    model = make(form, dtype=dtype, num_layers=L)
    cell = model.cell
    g = torch.Generator().manual_seed(2)
    slots, lists, names = layers_slots(model, cell, L)
    slots["x"] = torch.randn(B, model.input_size, dtype=dtype, generator=g)
    state0 = [torch.randn(L, B, s, dtype=dtype, generator=g) for s in cell.state_sizes()]
    slots.update({f"state0[{k}]": s for k, s in enumerate(state0)})
    lists["state0"] = [f"state0[{k}]" for k in range(len(state0))]
    if entry == "stepper":          # the Stepper's messages call x "input" and set_state's list "state"
        names.update({"x": "input", "state0": "state"}, **{f"state0[{k}]": f"state[{k}]" for k in range(len(state0))})
    case = Case(entry, cell, cpu.BACKEND._spec(cell), slots, lists, "x" if entry == "step" else "weight_ih_l0",
                names)
    case.batch = B
    return case


def layer_lists(case: Case) -> List[List]:
    return [case.value(k) for k in sorted((k for k in case.lists if k.startswith("layers[")), key=lambda k: int(k[7:-1]))]


# -- running a case: the kernels' outcome against the reference's ------------------------------------
def run_kernels(case: Case):
    ext = cpu.extension()
    v = case.value
    if case.entry == "forward":
        states, saved = ext.forward(case.spec, v("xp"), v("mask"), v("state0"), v("rec"), True)
        return list(states) + list(saved)
    if case.entry == "backward":
        d_xp, d0, dp = ext.backward(case.spec, v("d_out"), v("d_final"), v("mask"), v("state0"), v("states"),
                                    v("saved"), v("rec"))
        return [d_xp, *d0, *dp]
    if case.entry == "step":
        out, h_n = ext.step(case.spec, v("x"), v("state0"), layer_lists(case))
        return [out, *h_n]
    if case.entry == "stepper":                      # constructor, set_state, one step
        s = ext.Stepper("Test.stream", case.spec, layer_lists(case), case.batch)
        s.set_state(v("state0"))
        out = s.step(v("x")).clone()
        return [out, *[t.clone() for t in s.state()]]
    raise AssertionError(case.entry)


def run_reference(case: Case):
    v = case.value
    cell = case.cell
    with torch.no_grad():
        if case.entry == "forward":
            if v("xp").shape[0] == 0:                  # the loop stacks no steps: T = 0 is empty results
                B = v("xp").shape[1]
                sizes = list(cell.state_sizes()) + list(cell.saved_sizes())
                return [v("xp").new_empty(0, B, n) for n in sizes]
            states, saved = reference.forward(cell, v("xp"), v("mask"), tuple(v("state0")), tuple(v("rec")), True)
            return list(states) + [zero_padded(s, v("mask")) for s in saved]
        if case.entry == "backward":
            d_xp, d0, dp = reference.backward(cell, v("d_out"), tuple(v("d_final")), v("mask"), tuple(v("state0")),
                                              tuple(v("states")), tuple(v("saved")), tuple(v("rec")))
            return [d_xp, *d0, *dp]
        x = v("x")
        out, h_n = step_stack(cell, x.unsqueeze(0) if x.dim() == 1 else x, tuple(v("state0")), layer_lists(case))
        return [out.squeeze(0) if x.dim() == 1 else out, *h_n]


def zero_padded(t, mask):
    """The kernels write zeros into the saved rows of padded steps; the reference keeps its values."""
    return t if mask is None else t * mask


def same(a, b) -> Optional[str]:
    if len(a) != len(b):
        return f"{len(a)} results, the reference gives {len(b)}"
    for k, (x, y) in enumerate(zip(a, b)):
        if x is None or y is None:
            if (x is None) != (y is None):
                return f"result {k}: {x is None} None against {y is None}"
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"result {k}: {tuple(x.shape)} {x.dtype}, the reference gives {tuple(y.shape)} {y.dtype}"
        if x.numel() and not torch.allclose(x, y, equal_nan=True, **TOL[y.dtype]):
            return f"result {k}: max difference {(x - y).abs().max().item():.3g}"
    return None


def clear_error(e: BaseException, names: List[str]) -> Optional[str]:
    """None when e is an allowed error whose message names one of ``names`` (or pybind's refusal of a
    value of the wrong Python type, which prints the signature); else what is wrong with it."""
    if not isinstance(e, ALLOWED):
        return f"{type(e).__name__} is not a RuntimeError, TypeError or ValueError: {e}"
    msg = str(e)
    if isinstance(e, TypeError) and ("incompatible function arguments" in msg or
                                     "incompatible constructor arguments" in msg):
        return None
    if any(n in msg for n in names):
        return None
    return f"{type(e).__name__} names none of {names}: {msg[:300]}"


def outcome(case: Case, blame: List[str]) -> Optional[str]:
    """None when the case ends well (see the module docstring), else why not."""
    try:
        got = run_kernels(case)
    except Exception as e:                                           # noqa: BLE001 - judged here
        ENDINGS["error"] += 1
        return clear_error(e, blame)
    ENDINGS["result"] += 1
    try:
        want = run_reference(case)
    except Exception as e:                                           # noqa: BLE001
        return f"the kernels accepted what the reference refuses ({type(e).__name__}: {str(e)[:200]})"
    return same(got, want)


# -- the groups -----------------------------------------------------------------------------------------
def entry_cases(form: str, dtype, rng: random.Random, **sizes):
    yield forward_case(form, dtype, **sizes)
    yield backward_case(form, dtype, **sizes)
    yield step_case(form, dtype)
    yield step_case(form, dtype, entry="stepper")


def mutated(case: Case, rng: random.Random):
    """(label, case, names an error may blame) for every one-argument mutation of case."""
    for slot in list(case.slots):
        value = case.slots[slot]
        if value is not None and (not torch.is_tensor(value) or value.device.type != "cpu"):
            continue
        if value is None:
            anchor = case.slots.get(case.anchor)
            if slot == "mask" and torch.is_tensor(anchor) and anchor.dim() >= 2:
                T, B = anchor.shape[:2]
                yield f"{slot}=all", case.replaced(slot, torch.ones(T, B, 1, dtype=torch.bool)), [slot]
            continue
        name = case.names.get(slot, slot)
        blame = case.message_names() if slot == case.anchor else [name]
        for label, v in mutations(value, rng):
            yield f"{slot}:{label}", case.replaced(slot, v), blame if not label.startswith("size") else \
                case.message_names()
    for lst, names in case.lists.items():
        for n in (len(names) - 1, len(names) + 1):
            if n >= 0:
                yield f"{lst}:len{n}", case.resized(lst, n), case.message_names()


def group_extension(rng, counts, report, n=None):
    for form in kernel_forms():
        for dtype in (torch.float64, torch.float32):
            for case in entry_cases(form, dtype, rng):
                for label, m, blame in mutated(case, rng):
                    report(f"{form}-{str(dtype)[6:]}-{case.entry}-{label}", lambda m=m, b=blame: outcome(m, b))


def group_random(rng, counts, report, n=300):
    forms = kernel_forms()
    for i in range(n):
        form = rng.choice(forms)
        dtype = rng.choice([torch.float64, torch.float32])
        T, B = rng.randint(0, 4), rng.randint(0, 3)
        maker = rng.choice(["forward", "backward", "step", "stepper"])
        if maker == "forward":
            case = forward_case(form, dtype, T=T, B=B, lengths=rng.random() < 0.5 and T > 0 and B > 0)
        elif maker == "backward":
            case = backward_case(form, dtype, T=max(T, 1), B=B, lengths=rng.random() < 0.5 and B > 0)
        else:
            case = step_case(form, dtype, B=max(B, 1), L=rng.randint(1, 3), entry=maker)
        options = list(mutated(case, rng))
        for _ in range(rng.randint(1, 2)):                        # one or two mutations at once
            label, case, blame = rng.choice(options)
            options = list(mutated(case, rng)) or options
        report(f"{i}-{form}-{maker}-{label}", lambda c=case: outcome(c, c.message_names() + ["layers", "names"]))


def group_held(rng, counts, report, n=None):
    """The parameters a Stepper holds, changed through ``p.data = ...`` after it was made."""
    ext = cpu.extension()
    for form in kernel_forms():
        model = make(form, num_layers=2)
        for pname in [n for names in model._step_names for n in names if getattr(model, n) is not None]:
            param = getattr(model, pname)
            for label, v in mutations(param.detach().clone(), rng):
                if v is None or not torch.is_tensor(v):
                    continue
                m = copy.deepcopy(model)
                x = torch.randn(2, m.input_size, dtype=param.dtype)

                def check(m=m, v=v, x=x, pname=pname):
                    s = ext.Stepper("Test.stream", cpu.BACKEND._spec(m.cell), m.step_parameters(), 2)
                    try:
                        getattr(m, pname).data = v
                    except Exception:                           # noqa: BLE001 - torch refused the change itself
                        return None
                    try:
                        out = s.step(x).clone()
                    except Exception as e:                      # noqa: BLE001
                        return clear_error(e, [pname])
                    with torch.no_grad():
                        want = step_stack(m.cell, x, tuple(torch.zeros(2, 2, n, dtype=x.dtype) for n in
                                                           m.cell.state_sizes()), m.step_parameters())[0]
                    return same([out], [want])
                report(f"{form}-{pname}-{label}", check)


# -- through the layers: surgery, then forward, backward, step and stream --------------------------------
def surgeries(form, rng):
    """(label, function(model) -> the parameter an error must name, or None when it must run)."""
    import torch.nn.utils.parametrizations as P
    from torch.nn.utils import prune

    def rebind(m):
        m.weight_ih_l0 = torch.nn.Parameter(torch.randn_like(m.weight_ih_l0))

    def resize(m):
        m.weight_ih_l0.data = torch.randn(m.weight_ih_l0.shape[0] + 3, m.weight_ih_l0.shape[1], dtype=torch.float64)
        return "weight_ih_l0"

    def dtype(m):
        p = getattr(m, m._step_names[0][2])
        p.data = p.data.float()
        return m._step_names[0][2]

    def noncontig(m):
        p = getattr(m, m._step_names[0][2])
        p.data = noncontiguous(p.data)

    def transposed(m):
        m.weight_ih_l0.data = m.weight_ih_l0.data.t().contiguous().t()

    def pruned(m):
        prune.random_unstructured(m, m._step_names[0][2], amount=0.5)

    def pruned_twice(m):
        prune.l1_unstructured(m, "weight_ih_l0", amount=0.3)
        prune.random_unstructured(m, "weight_ih_l0", amount=0.3)

    def weight_norm(m):
        P.weight_norm(m, m._step_names[0][2])

    def old_weight_norm(m):
        torch.nn.utils.weight_norm(m, "weight_ih_l0")

    def orthogonal(m):
        P.orthogonal(m, "weight_ih_l0")

    def deleted_bias(m):
        if m.bias:
            del m.bias_ih_l0
            m.bias_ih_l0 = None
            return "bias_ih_l0"

    def plain_tensor(m):
        w = m.weight_ih_l0.detach().clone()
        del m.weight_ih_l0
        m.weight_ih_l0 = w

    return [(f.__name__, f) for f in (rebind, resize, dtype, noncontig, transposed, pruned, pruned_twice,
                                      weight_norm, old_weight_norm, orthogonal, deleted_bias, plain_tensor)]


def layer_runs(input_size: int):
    """(label, function(m) -> tensors): the same work, run on ours and on the reference copy."""
    T, B = 4, 3
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, B, input_size, dtype=torch.float64, generator=g)
    lengths = torch.tensor([4, 2, 3])

    def fwd_bwd(m):
        xi = x.clone().requires_grad_()
        out, state = m(xi, lengths=lengths)
        leaves = [xi] + [p for p in m.parameters() if p.requires_grad]
        grads = torch.autograd.grad(out.square().sum(), leaves, allow_unused=True)
        return [out.detach(), *[g_ for g_ in grads if g_ is not None]]

    def steps(m):
        with torch.no_grad():
            state, outs = None, []
            for x_t in x:
                y, state = m.step(x_t, state)
                outs.append(y)
            return [torch.stack(outs)]

    def stream(m):
        with torch.no_grad():
            s = m.stream(B)
            return [torch.stack([s(x_t).clone() for x_t in x])]

    def stream_then_train(m):
        """An optimiser step after the stream is made is seen by its next steps (in place on held
        parameters, or read again); the stream must agree with forward after the step."""
        with torch.no_grad():
            s = m.stream(B)
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
        m(x)[0].sum().backward()
        opt.step()
        with torch.no_grad():
            ys, want = torch.stack([s(x_t).clone() for x_t in x]), m(x)[0]
        if not torch.allclose(ys, want, **TOL[torch.float64]):
            raise AssertionError(f"the stream missed the optimiser step: {(ys - want).abs().max().item():.3g}")
        return [ys]

    return [("forward+backward", fwd_bwd), ("step", steps), ("stream", stream), ("stream_then_train", stream_then_train)]


def group_layers(rng, counts, report, n=None):
    for form in kernel_forms():
        if form.startswith("jordan") and form != "jordan_softmax":
            continue
        for label, surgery in surgeries(form, rng):
            base = make(form, num_layers=2, backend="cpu")
            for run_label, run in layer_runs(base.input_size):
                def check(surgery=surgery, run=run, base=base):
                    ours, ref = copy.deepcopy(base), copy.deepcopy(base)     # (a pruned module cannot be copied)
                    ref.backend = "reference"
                    for m in (ref, ours):
                        torch.manual_seed(0)
                        blame = surgery(m)
                    try:
                        got = run(ours)
                    except Exception as e:                       # noqa: BLE001
                        if blame is None:
                            return f"raised {type(e).__name__}: {str(e)[:300]}"
                        return clear_error(e, [blame])
                    if blame is not None:
                        return f"ran although {blame} is wrong"
                    return same(got, run(ref))
                report(f"{form}-{label}-{run_label}", check)
        # wrong-shaped arguments through the layers
        model = make(form, num_layers=2, backend="cpu")
        T, B, I = 4, 3, model.input_size
        x = torch.randn(T, B, I, dtype=torch.float64)
        hx = model(x)[1]
        hx = tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach()
        bad = {
            "x:size": lambda: model(torch.randn(T, B, I + 1, dtype=torch.float64)),
            "x:dtype": lambda: model(x.float()),
            "x:int": lambda: model(x.long()),
            "hx:size": lambda: model(x, _grow(hx, 2)),
            "hx:dtype": lambda: model(x, _map(hx, lambda h: h.float())),
            "lengths:long": lambda: model(x, lengths=torch.tensor([5, 1, 1])),
            "lengths:zero": lambda: model(x, lengths=torch.tensor([4, 0, 1])),
            "lengths:count": lambda: model(x, lengths=torch.tensor([4, 2])),
            "step:x": lambda: model.step(torch.randn(B, I + 2, dtype=torch.float64)),
            "step:hx": lambda: model.step(x[0], _grow(hx, 1)),
            "stream:x": lambda: model.stream(B)(torch.randn(B + 1, I, dtype=torch.float64)),
            "stream:hx": lambda: model.stream(B, _grow(hx, 2)),
        }
        for label, f in bad.items():
            def check(f=f, label=label):
                try:
                    with torch.no_grad():
                        f()
                except Exception as e:                           # noqa: BLE001
                    return clear_error(e, [label.split(":")[0].replace("stream", "input").replace("step", "input"),
                                           "hx", "h_0", "c_0", "y0", "input", "lengths"])
                return "ran on a wrong argument"
            report(f"{form}-{label}", check)


def _map(hx, f):
    return tuple(f(h) for h in hx) if isinstance(hx, tuple) else f(hx)


def _grow(hx, dim):
    def g(h):
        shape = list(h.shape)
        shape[dim] += 1
        return torch.randn(shape, dtype=h.dtype)
    return _map(hx, g)


# -- script and tests ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("group", choices=GROUPS)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    counts = {"cases": 0, "failures": 0}
    failures = []

    def report(label: str, check: Callable[[], Optional[str]]):
        print("start", label, flush=True)
        counts["cases"] += 1
        try:
            why = check()
        except Exception as e:                                   # noqa: BLE001 - the harness itself
            why = f"the check raised {type(e).__name__}: {e}"
        if why is not None:
            counts["failures"] += 1
            failures.append(f"{label}: {why}")

    groups = {"extension": group_extension, "held": group_held, "layers": group_layers, "random": group_random}
    groups[args.group](rng, counts, report, n=args.n)
    for f in failures[:50]:
        print("FAIL", f, file=sys.stderr)
    print(json.dumps({**counts, **ENDINGS}), flush=True)
    return 1 if counts["failures"] else 0


needs_kernels = pytest.mark.skipif(cpu.extension() is None, reason="the C++ kernels did not build")


@needs_kernels
@pytest.mark.parametrize("group, n", [("extension", 0), ("held", 0), ("layers", 0), ("random", 300)])
def test_every_case_ends_in_a_clear_error_or_a_correct_result(group, n):
    res = subprocess.run([sys.executable, __file__, group, "--n", str(n), "--seed", "11"], capture_output=True,
                         text=True, timeout=900)
    started = [line for line in res.stdout.splitlines() if line.startswith("start ")]
    assert res.returncode in (0, 1), (f"the process died (exit {res.returncode}) in case "
                                      f"{started[-1][6:] if started else '?'}:\n{res.stderr[-3000:]}")
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.returncode == 0 and counts["failures"] == 0, res.stderr[-6000:]
    assert counts["cases"] == len(started) > 0
    if group in ("extension", "random"):                           # both endings are exercised
        assert counts["error"] > 0 and counts["result"] > 0, counts


if __name__ == "__main__":
    sys.exit(main())
