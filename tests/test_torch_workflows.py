"""rnnkit where torch.nn users go every day: second-order gradients, autocast, empty batches,
parametrized and pruned weights, rebound parameters of the wrong shape.

Every case runs on every registered backend that can run it here, against torch.nn where it
has the cell and against the autograd oracle otherwise.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.utils.parametrizations
import torch.nn.utils.prune
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import backends, registry
from rnnkit.cells import LSTMCell

F64 = torch.float64
# the backends that run these tests' case here (CPU tensors): not e.g. triton without its interpreter
BACKENDS = [n for n in backends.BACKENDS
            if n != "auto" and backends.get(n).supports(LSTMCell(4), torch.device("cpu"), torch.float32)]


def _layer(form: str, backend: str, dtype=F64, **kw):
    entry, kwargs = registry.forms()[form]
    torch.manual_seed(0)
    layer = entry.layer(3, 4, dtype=dtype, backend=backend, **kwargs, **kw)
    return layer.eval() if layer.cell.noise_names else layer       # noise: random in training (helpers.make)


def _runnable(form: str, backend: str, dtype=F64) -> bool:
    return bool(backends.get(backend).supports(_layer(form, "reference", dtype).cell, torch.device("cpu"), dtype))


CASES = [(f, b) for f in registry.forms() for b in BACKENDS if _runnable(f, b)]


def _x(T=5, B=2, seed=1, dtype=F64):
    return torch.randn(T, B, 3, dtype=dtype, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def _penalty_grads(model, x, params):
    """Gradients of a gradient penalty ||d sum(out^2) / dx||^2 with respect to params."""
    out = model(x)[0]
    g, = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    return torch.autograd.grad(g.pow(2).sum(), params, allow_unused=True)


def _hvp(model, x, params, v):
    """Hessian-vector product of sum(out^2) with respect to params, along v."""
    out = model(pack_padded_sequence(x, [5, 3]))[0].data       # variable lengths too
    gs = torch.autograd.grad(out.pow(2).sum(), params, create_graph=True)
    dot = sum((g * w).sum() for g, w in zip(gs, v))
    return torch.autograd.grad(dot, params, allow_unused=True)


def _oracle_pair(form: str, backend: str, **kw):
    """(reference module, module under test) with the same weights: torch.nn where it has the
    cell, else rnnkit's autograd backend."""
    ours = _layer(form, backend, **kw)
    entry, kwargs = registry.forms()[form]
    if form in registry.twin_forms():
        ref = entry.torch_twin(**ours.torch_kwargs())
    else:
        ref = _layer(form, backends.ORACLE, **kw)
    ref.load_state_dict(ours.state_dict())
    return ref, ours


@pytest.mark.parametrize("form, backend", CASES)
def test_second_order_gradients_match(form, backend):
    """Gradient penalty and Hessian-vector product: the double backward is exact, never silently wrong."""
    ref, ours = _oracle_pair(form, backend, num_layers=2, bidirectional=True)
    for fn in (_penalty_grads, _hvp):
        results = []
        for m in (ref, ours):
            params = list(m.parameters())
            v = [torch.randn(p.shape, dtype=F64, generator=torch.Generator().manual_seed(k)) for k, p in enumerate(params)]
            args = (m, _x(), params) + ((v,) if fn is _hvp else ())
            results.append([torch.zeros_like(p) if g is None else g for g, p in zip(fn(*args), params)])
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, atol=1e-9, rtol=1e-9)


def _amp_dtypes(result, model):
    """(output dtype, state parts' dtypes) of a layer's (output, state) result."""
    out, state = result[:2]
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    return out.dtype, tuple(s.dtype for s in model.unpack_state(state))


@pytest.mark.parametrize("form", list(registry.forms()))
def test_autocast_runs_in_float32_and_returns_torch_nns_dtypes(form):
    """Under CPU bf16 autocast the recurrence runs in float32 and the results come back in the
    dtypes torch.nn's layer returns (bf16 but for GRU, LSTM on a PackedSequence and c_n with
    proj_size); the variants torch.nn lacks follow their plain cell, cells torch lacks bf16."""
    model = _layer(form, None, dtype=torch.float32)
    plain = registry.forms()[form][0].layer(3, 4, proj_size=model.proj_size) if model.torch_twin else None
    x = _x(dtype=torch.float32)
    packed = pack_padded_sequence(x, torch.tensor([5, 3]))
    expected_out, expected_state = model(x)[:2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = model(x)
        out16, _ = model(x.detach().bfloat16())                 # a bf16 input, as autocast layers emit
        step = model.step(x[0]) if not model.bidirectional else None
        runs = {"padded": (model(x), plain and plain.to_torch()(x)),
                "packed": (model(packed), plain and plain.to_torch()(packed))}
    bf16 = torch.bfloat16
    for kind, (ours, theirs) in runs.items():
        expected = _amp_dtypes(theirs, model) if theirs else (bf16, (bf16,) * len(model.unpack_state(ours[1])))
        assert _amp_dtypes(ours, model) == expected, kind
    assert out16.dtype == out.dtype == runs["padded"][0][0].dtype
    if step is not None:
        assert _amp_dtypes(step, model) == _amp_dtypes((out, state), model)
    torch.testing.assert_close(out.float(), expected_out, atol=1e-2, rtol=1e-2)
    out.float().sum().backward()
    assert x.grad is not None and all(p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("form", list(registry.forms()))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_modules_run(form, dtype):
    """``.half()`` / ``.bfloat16()`` modules run (``auto`` picks a backend that supports the dtype)."""
    model = _layer(form, None, dtype=torch.float32).to(dtype)
    out, _ = model(_x(dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("form, backend", CASES)
def test_empty_batch_forward_and_backward(form, backend):
    model = _layer(form, backend, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=F64, requires_grad=True)
    out, state = model(x, lengths=torch.tensor([], dtype=torch.long))
    assert out.shape == (5, 0, 2 * model.cell.out_size)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_pruned_and_weight_normed_weights_are_used_by_step_and_stream():
    """Parametrized weights are read from the module (torch.nn.utils.prune, weight_norm)."""
    for apply in (lambda m: torch.nn.utils.prune.l1_unstructured(m, "weight_hh_l0", amount=0.5),
                  lambda m: torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")):
        model = _layer("lstm", None, dtype=torch.float32).eval()
        apply(model)
        twin = nn.LSTM(3, 4)
        twin.load_state_dict({k: getattr(model, k) for k in twin.state_dict()})
        x = torch.randn(2, 3)
        expected = twin(x[None])[0][0]
        torch.testing.assert_close(model(x[None])[0][0], expected)
        torch.testing.assert_close(model.step(x)[0], expected)
        with torch.no_grad():
            torch.testing.assert_close(model.step(x)[0], expected)
            torch.testing.assert_close(model.stream(2)(x), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rebound_parameter_of_the_wrong_shape_is_an_error_naming_it(backend):
    model = _layer("lstm", backend, dtype=torch.float32)
    model.weight_hh_l0.data = torch.randn(8, 4)
    with pytest.raises(RuntimeError, match="weight_hh_l0: expected shape \\(16, 4\\)"):
        model(torch.randn(5, 2, 3))
    with pytest.raises(RuntimeError, match="weight_hh_l0"), torch.no_grad():
        model.step(torch.randn(2, 3))


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("backend", [None, "cpu"], ids=["auto", "cpu"])
def test_forward_mode_ad_carries_the_tangents_as_torch_nn(backend, grad):
    """Under torch.autograd.forward_ad the kernels (no jvp) step aside for torch's own ops: forward,
    step and the Cell modules give torch.nn's tangents, never outputs without one."""
    import torch.autograd.forward_ad as fwAD
    if backend == "cpu" and "cpu" not in backends.available():
        pytest.skip("the C++ kernels did not build")
    torch.manual_seed(0)
    model = rnnkit.GRU(3, 5, num_layers=2, backend=backend, dtype=F64).eval()
    twin = model.to_torch()
    cell = rnnkit.GRUCell(3, 5, backend=backend, dtype=F64)
    twin_cell = nn.GRUCell(3, 5, dtype=F64)
    twin_cell.load_state_dict(cell.state_dict())
    x, v = torch.randn(4, 2, 3, dtype=F64), torch.randn(4, 2, 3, dtype=F64)
    h = torch.randn(2, 2, 5, dtype=F64)
    with fwAD.dual_level(), torch.set_grad_enabled(grad):
        dual = fwAD.make_dual(x, v)
        calls = [(model(dual, h)[0], twin(dual, h)[0]),
                 (model.step(dual[0], h)[0], twin(dual[:1], h)[0][0]),
                 (cell(dual[0], h[0]), twin_cell(dual[0], h[0]))]
        for ours, theirs in calls:
            got, want = fwAD.unpack_dual(ours).tangent, fwAD.unpack_dual(theirs).tangent
            assert got is not None
            torch.testing.assert_close(got, want)


def _loss(out):
    return out.square().sum() + out.sum()


@pytest.mark.parametrize("form, backend", CASES)
def test_torch_func_grad_vjp_jacrev_and_jvp_give_autograds_gradients(form, backend):
    """torch.func's transforms (whose wrapper tensors the kernels cannot read) run torch's own ops
    and give the gradients ordinary autograd gives through the hand-derived backward: over the
    parameters by functional_call, over the input, on a deep bidirectional stack with lengths."""
    from torch.func import functional_call, grad, jacrev, jvp, vjp
    model = _layer(form, backend, num_layers=2, bidirectional=True)
    x, lengths = _x(), torch.tensor([5, 3])
    params = {k: v.detach() for k, v in model.named_parameters()}
    _loss(model(x, lengths=lengths)[0]).backward()
    got = grad(lambda p: _loss(functional_call(model, p, (x.detach(),), {"lengths": lengths})[0]))(params)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)
    out, pull = vjp(lambda xx: model(xx, lengths=lengths)[0], x.detach())
    torch.testing.assert_close(pull(2 * out + 1)[0], x.grad)
    jac = jacrev(lambda xx: _loss(model(xx, lengths=lengths)[0]))(x.detach())
    torch.testing.assert_close(jac, x.grad)
    # jvp against vjp: <u, J v> = <J^T u, v>
    v = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    _, jv = jvp(lambda xx: model(xx, lengths=lengths)[0], (x.detach(),), (v,))
    u = torch.randn(jv.shape, dtype=F64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close((u * jv).sum(), (pull(u)[0] * v).sum())


@pytest.mark.parametrize("form", list(registry.forms()))
def test_vmap_runs_each_sequence_set_as_its_own_call(form):
    """torch.func.vmap over a leading dimension of (T, B, I) inputs (torch.nn's layers have no
    batching rule) gives the separate calls' outputs and states."""
    model = _layer(form, None, num_layers=2)
    xs = torch.randn(3, 5, 2, 3, dtype=F64)
    out, state = torch.func.vmap(model)(xs)
    for k, x in enumerate(xs):
        want_out, want_state = model(x)
        torch.testing.assert_close(out[k], want_out)
        for a, b in zip(model.unpack_state(state), model.unpack_state(want_state)):
            torch.testing.assert_close(a[k], b)


@pytest.mark.parametrize("backend", [None, "cpu"], ids=["auto", "cpu"])
def test_torch_func_grad_of_step_and_cell_modules(backend):
    """torch.func.grad through model.step (input and state) and a Cell module (input and, by
    functional_call, parameters) gives autograd's gradients: the unchecked and kernel paths
    step aside for functorch's wrappers."""
    from torch.func import functional_call, grad
    if backend == "cpu" and "cpu" not in backends.available():
        pytest.skip("the C++ kernels did not build")
    torch.manual_seed(0)
    model = rnnkit.LSTM(3, 5, num_layers=2, backend=backend, dtype=F64)
    cell = rnnkit.LSTMCell(3, 5, backend=backend, dtype=F64)
    x, h, c = (torch.randn(*shape, dtype=F64) for shape in ((2, 3), (2, 2, 5), (2, 2, 5)))
    step = lambda xx, hh: _loss(model.step(xx, (hh, c))[0])
    xg, hg = x.clone().requires_grad_(), h.clone().requires_grad_()
    step(xg, hg).backward()
    for got, want in zip(grad(step, argnums=(0, 1))(x, h), (xg.grad, hg.grad)):
        torch.testing.assert_close(got, want)
    params = {k: v.detach() for k, v in cell.named_parameters()}
    _loss(cell(xg, (h[0], c[0]))[0]).backward()
    got = grad(lambda p: _loss(functional_call(cell, p, (x, (h[0], c[0])))[0]))(params)
    for name, p in cell.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)


@pytest.mark.parametrize("form", list(registry.forms()))
def test_meta_device_shapes_and_deferred_initialisation(form):
    """On the meta device (shape inference, deferred initialisation as under
    ``with torch.device("meta")``) forward, backward, step and the Cell modules run as torch.nn's
    do, and ``to_empty`` + ``reset_parameters`` gives a working CPU model."""
    entry, kwargs = registry.forms()[form]
    with torch.device("meta"):
        model = entry.layer(3, 4, num_layers=2, **kwargs).eval()
        x = torch.randn(5, 2, 3)
    out, state = model(x)
    assert out.device.type == "meta" and out.shape == (5, 2, model.cell.out_size)
    out.sum().backward()
    assert all(p.grad.device.type == "meta" for p in model.parameters())
    y, _ = model.step(x[0])
    assert y.shape == (2, model.cell.out_size)
    model.to_empty(device="cpu")
    model.reset_parameters()
    assert torch.isfinite(model(torch.randn(5, 2, 3))[0]).all()


def test_meta_device_cell_modules():
    for cls in (rnnkit.RNNCell, rnnkit.LSTMCell, rnnkit.GRUCell):
        cell = cls(3, 4, device="meta")
        out = cell(torch.randn(2, 3, device="meta"))
        assert all(t.device.type == "meta" and t.shape == (2, 4) for t in (out if isinstance(out, tuple) else (out,)))


@pytest.mark.parametrize("form", ["lstm_proj", "gru", "jordan_tanh", "elman_relu"])
def test_vmap_over_stacked_parameters_runs_an_ensemble(form):
    """torch.func's model ensembling (stack_module_state + functional_call under vmap over the
    weights) gives each member's own outputs; torch.nn's RNNs have no batching rule for it."""
    import copy
    from torch.func import functional_call, stack_module_state, vmap
    members = [_layer(form, None, num_layers=2) for _ in range(3)]
    for k, m in enumerate(members):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * k)                                   # different members
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")
    x = torch.randn(5, 2, 3, dtype=F64)
    out = vmap(lambda p, b: functional_call(base, (p, b), (x,))[0])(params, buffers)
    for k, m in enumerate(members):
        torch.testing.assert_close(out[k], m(x)[0])
