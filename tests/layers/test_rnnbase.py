"""rnnkit's layers with a torch.nn twin are ``torch.nn.RNNBase`` instances (user code branches on
it), and every RNNBase method that user code can reach works on them -- each compared with the
same call on torch.nn's module -- while rnnkit's own forward, parameters and pickled state stay.
"""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

import rnnkit
from helpers import backends_for

F64 = torch.float64
# (torch.nn class, rnnkit class, constructor keywords): every twin and the options that change
# RNNBase's view of the module (mode, proj_size, bias, directions, layers).
CASES = {
    "rnn_tanh": (nn.RNN, rnnkit.Elman, {}),
    "rnn_relu": (nn.RNN, rnnkit.Elman, {"nonlinearity": "relu", "bias": False}),
    "lstm": (nn.LSTM, rnnkit.LSTM, {"num_layers": 2, "bidirectional": True}),
    "lstm_proj": (nn.LSTM, rnnkit.LSTM, {"proj_size": 2, "num_layers": 2, "bias": False}),
    "gru": (nn.GRU, rnnkit.GRU, {"num_layers": 2, "batch_first": True, "dropout": 0.5}),
}


def pair(case: str, dtype=F64):
    """(torch.nn module, rnnkit module) with the same weights."""
    ref_cls, our_cls, kw = CASES[case]
    torch.manual_seed(0)
    ref = ref_cls(3, 4, dtype=dtype, **kw)
    ours = our_cls(3, 4, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def x_for(module, T=5, B=2, dtype=F64):
    g = torch.Generator().manual_seed(1)
    return torch.randn((B, T, 3) if module.batch_first else (T, B, 3), dtype=dtype, generator=g)


def flat(result):
    out, h = result
    return [out, *(h if isinstance(h, tuple) else (h,))]


def assert_same_run(a, b, x):
    for u, v in zip(flat(a(x)), flat(b(x))):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("case", CASES)
def test_is_an_rnnbase_but_not_torchs_class(case):
    ref, ours = pair(case)
    assert isinstance(ours, nn.RNNBase) and isinstance(ours, nn.Module)
    # Not nn.LSTM & co.: torch.compile graph-breaks on those, and their forward is not ours.
    assert not isinstance(ours, (nn.RNN, nn.LSTM, nn.GRU))
    assert type(ours).forward is not type(ref).forward


def test_jordan_is_not_an_rnnbase():
    # RNNBase means torch's modes (RNN_TANH, RNN_RELU, LSTM, GRU) and parameter layout; a Jordan
    # network has neither (no weight_hh, an output layer), so code branching on it must skip it.
    m = rnnkit.Jordan(3, 4, 2)
    assert not isinstance(m, nn.RNNBase)
    assert m._flat_weights_names == ["weight_ih_l0", "weight_yh_l0", "bias_ih_l0", "weight_hy_l0", "bias_hy_l0"]


@pytest.mark.parametrize("case", CASES)
def test_rnnbase_attributes_as_torch(case):
    ref, ours = pair(case)
    for name in nn.RNNBase.__constants__:                           # mode, input_size, ..., proj_size
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours._flat_weights_names == ref._flat_weights_names
    assert ours._all_weights == ref._all_weights                   # names per layer and direction
    assert [[p.shape for p in ws] for ws in ours.all_weights] == [[p.shape for p in ws] for ws in ref.all_weights]
    assert all(a is getattr(ours, n) for a, n in zip(ours._flat_weights, ours._flat_weights_names))
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1] or case == "rnn_relu"


def test_relu_elman_repr_names_its_nonlinearity():
    assert repr(rnnkit.Elman(3, 4, nonlinearity="relu")) == "Elman(3, 4, nonlinearity='relu')"


# -- torch's RNNBase checks, run unchanged on rnnkit's modules -----------------------------------
def _hidden(module, B=2, dtype=F64):
    D = 2 if module.bidirectional else 1
    h = torch.zeros(D * module.num_layers, B, module.proj_size or module.hidden_size, dtype=dtype)
    return (h, torch.zeros(D * module.num_layers, B, module.hidden_size, dtype=dtype)) if module.mode == "LSTM" else h


def _outcome(call):
    try:
        return "ok", call()
    except Exception as e:                                          # noqa: BLE001 - compared by type
        return type(e), None


@pytest.mark.parametrize("case", CASES)
def test_torchs_argument_checks_agree(case):
    ref, ours = pair(case)
    x = x_for(ref)
    good, wrong_batch = _hidden(ref), _hidden(ref, B=3)
    calls = {
        "check_input": lambda m: m.check_input(x, None),
        "check_input dtype": lambda m: m.check_input(x.float(), None),
        "check_input size": lambda m: m.check_input(x[..., :2], None),
        "get_expected_hidden_size": lambda m: m.get_expected_hidden_size(x, None),
        "check_forward_args": lambda m: m.check_forward_args(x, good, None),
        "check_forward_args batch": lambda m: m.check_forward_args(x, wrong_batch, None),
        "permute_hidden": lambda m: m.permute_hidden(good, torch.tensor([1, 0])),
        "permute_hidden none": lambda m: m.permute_hidden(good, None),
    }
    if ref.mode != "LSTM":
        calls["check_hidden_size"] = lambda m: m.check_hidden_size(good, m.get_expected_hidden_size(x, None))
    for what, call in calls.items():
        (a, ra), (b, rb) = _outcome(lambda: call(ref)), _outcome(lambda: call(ours))
        assert a == b, what
        _same(ra, rb)


def _same(a, b):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b)
    elif isinstance(a, tuple) and a and isinstance(a[0], torch.Tensor):
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v)
    else:
        assert a == b


# -- the weight list: never stale ----------------------------------------------------------------
@pytest.mark.parametrize("case", ["lstm", "gru"])
def test_flat_weights_follow_rebinding_pruning_and_plain_attributes(case):
    ref, ours = pair(case)
    new = nn.Parameter(torch.randn_like(ref.weight_hh_l0))
    for m in (ref, ours):
        m.weight_hh_l0 = new                                        # torch patches its cached list
        assert m._flat_weights[1] is new
    torch.nn.utils.prune.l1_unstructured(ours, "weight_ih_l0", amount=0.5)
    assert ours._flat_weights[0] is ours.weight_ih_l0 and (ours._flat_weights[0] == 0).any()
    # The weight-drop pattern: the parameter removed, a plain tensor set in its place each step.
    raw = ours.weight_hh_l0
    del ours._parameters["weight_hh_l0"]
    ours.weight_hh_l0 = raw * 0.0
    assert ours._flat_weights[1] is ours.weight_hh_l0
    assert ours._weights_have_changed() is False
    ours._update_flat_weights()
    ours._init_flat_weights()
    assert ours._flat_weights[1] is ours.weight_hh_l0


def test_torchs_cache_calls_leave_the_module_picklable():
    _, ours = pair("lstm")
    ours._init_flat_weights()                                       # torch keeps weak references here
    ours._update_flat_weights()
    loaded = pickle.loads(pickle.dumps(ours))
    assert_same_run(loaded, ours, x_for(ours))


def test_assigning_flat_weights_binds_the_attributes():
    ref, ours = pair("lstm")
    new = [nn.Parameter(w.detach() * 2) for w in ours._flat_weights]
    ours._flat_weights = new
    assert all(getattr(ours, n) is w for n, w in zip(ours._flat_weights_names, new))
    ref._flat_weights = [w.detach() * 2 for w in ref._flat_weights]  # torch's forward reads the list
    x = x_for(ref)
    assert_same_run(ref, ours, x)
    with pytest.raises(ValueError, match="_flat_weights: expected a list of 16 tensors"):
        ours._flat_weights = new[:3]
    with pytest.raises(TypeError, match="weight_ih_l0"):            # nn.Module's rule for a Parameter
        ours._flat_weights = [w.detach() for w in new]


@pytest.mark.parametrize("case", CASES)
def test_flatten_parameters_is_a_no_op(case):
    _, ours = pair(case)
    before = [(w.data_ptr(), w.clone()) for w in ours._flat_weights]
    assert ours.flatten_parameters() is None
    for (ptr, value), w in zip(before, ours._flat_weights):
        assert w.data_ptr() == ptr and torch.equal(w, value)


def test_setattr_is_nn_modules():
    ref, ours = pair("gru")
    for m in (ref, ours):
        m.note = "x"
        assert m.note == "x"
        with pytest.raises(TypeError, match="weight_hh_l0"):
            m.weight_hh_l0 = torch.zeros(12, 4)                     # a plain tensor for a Parameter


# -- copies, conversions, pickling, replication ----------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_to_double_half_keep_the_weight_list(case):
    ref, ours = pair(case, dtype=torch.float32)
    x = x_for(ref, dtype=F64)
    for m in (ref, ours):
        m.double()
        assert all(w.dtype == F64 and w is getattr(m, n) for w, n in zip(m._flat_weights, m._flat_weights_names))
    assert_same_run(ref, ours, x)
    ours.half()
    assert all(w.dtype == torch.float16 for w in ours._flat_weights)
    ours.to(torch.float32)
    assert all(w.dtype == torch.float32 for w in ours._flat_weights)
    out = ours(x.float())[0]
    assert out.dtype == torch.float32


@pytest.mark.parametrize("case", CASES)
def test_deepcopy_is_independent(case):
    ref, ours = pair(case)
    dup = copy.deepcopy(ours)
    assert type(dup) is type(ours) and isinstance(dup, nn.RNNBase)
    assert all(a is not b for a, b in zip(dup._flat_weights, ours._flat_weights))
    assert all(w is getattr(dup, n) for w, n in zip(dup._flat_weights, dup._flat_weights_names))
    assert_same_run(dup, ref, x_for(ref))
    with torch.no_grad():
        dup.weight_ih_l0.add_(1.0)
    assert_same_run(ours, ref, x_for(ref))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("how", ["torch weights_only", "pickle"])
def test_whole_module_pickles(case, how):
    ref, ours = pair(case)
    ours.double()                                                   # .to() & co. must leave nothing unpicklable
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(ours))
    else:
        buf = io.BytesIO()
        torch.save(ours, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=True)
    assert type(loaded) is type(ours) and isinstance(loaded, nn.RNNBase)
    assert loaded._flat_weights_names == ref._flat_weights_names
    assert all(w is getattr(loaded, n) for w, n in zip(loaded._flat_weights, loaded._flat_weights_names))
    assert_same_run(loaded, ref, x_for(ref))
    assert "_flat_weight_refs" not in loaded.__dict__ and "_flat_weights" not in loaded.__dict__


def _replicate(module):
    """What torch.nn.parallel.replicate does to each replica (it broadcasts to GPUs, so it cannot
    run here): the module's own method, then every parameter set as a plain, differentiable
    attribute."""
    replica = module._replicate_for_data_parallel()
    for name, p in module._parameters.items():
        if p is None:
            replica._parameters[name] = None
        else:
            setattr(replica, name, p * 1.0)
    return replica


@pytest.mark.parametrize("case", CASES)
def test_data_parallel_replica_runs_and_backpropagates(case):
    ref, ours = pair(case)
    replica = _replicate(ours)
    assert type(replica) is type(ours) and list(replica.parameters()) == []
    assert ours._flat_weights[0] is ours.weight_ih_l0 and replica._flat_weights[0] is not ours.weight_ih_l0
    x = x_for(ref)
    assert_same_run(replica, ref, x)
    sum(t.sum() for t in flat(replica(x))).backward()
    sum(t.sum() for t in flat(ref(x))).backward()
    for n in ref._flat_weights_names:
        torch.testing.assert_close(getattr(ours, n).grad, getattr(ref, n).grad, msg=n)


@pytest.mark.parametrize("backend", backends_for("lstm", own_backward=True))
@pytest.mark.parametrize("case", ["rnn_tanh", "lstm_proj", "gru"])
def test_data_parallel_replica_step_backpropagates(case, backend):
    # The replica holds no parameters: step must still see that its weights need a graph (the
    # hand-written backends' step records none).
    _, ours = pair(case)
    ours.backend = backend
    x = x_for(ours)[:, 0] if ours.batch_first else x_for(ours)[0]
    out, _ = _replicate(ours).step(x)
    want, _ = ours.step(x)
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert ours.weight_ih_l0.grad is not None and ours.weight_ih_l0.grad.abs().sum() > 0


def test_data_parallel_wrapper_without_gpus_runs_the_module():
    ref, ours = pair("lstm")
    x = x_for(ref)
    assert_same_run(nn.DataParallel(ours), ref, x)


@pytest.mark.parametrize("case", ["lstm_proj", "gru"])
def test_functional_call_uses_the_given_weights(case):
    # torch's _weights_have_changed exists for this call; rnnkit reads the swapped attributes.
    ref, ours = pair(case)
    new = {n: torch.randn_like(w) for n, w in ref.named_parameters()}
    x = x_for(ref)
    for u, v in zip(flat(torch.func.functional_call(ours, new, (x,))), flat(torch.func.functional_call(ref, new, (x,)))):
        torch.testing.assert_close(u, v)
    assert_same_run(ours, ref, x)                                   # the module's own weights are back
