"""Elman, LSTM and both GRU forms against the ONNX reference operators (onnx.reference).

ONNX layout per direction: W (G*H, I), R (G*H, H), B = concat(Wb, Rb) (2*G*H), gate blocks in
ONNX order (LSTM i,o,f,c from torch's i,f,g,o; GRU z,r,h from torch's r,z,n).  An ONNX node is one
layer: a stack is run node by node, layer k+1 reading layer k's Y with directions concatenated.
GRU linear_before_reset=1 is torch's form (reset_after=True), 0 the original form of Cho et al.
Peephole LSTM: ONNX's P input (3*H per direction) holds the diagonal weights in the order i, o, f;
rnnkit's weight_ch is i, f, o (Gers & Schmidhuber 2000 in both: c_{t-1} into i and f, c_t into o).

onnx.reference's RNN only knows Tanh and Affine; RNNWithRelu adds the spec's Relu (max(0, x)).
The reference operators ignore sequence_lens, so lengths are checked elsewhere (test_lengths.py).
Every registered backend that supports the case runs; the ONNX side is computed once per case.
"""
import functools

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_rnn import RNN_14

from helpers import INPUT_SIZE, assert_all_close, cell_backends, flat, make, randn, random_state

T, B = 4, 3
OPSET = 14


class RNN(RNN_14):
    """ONNX RNN with the Relu activation of the spec added to onnx.reference's Tanh/Affine."""

    op_domain = ""

    def choose_act(self, name, alpha, beta):
        if name in ("Relu", "relu"):
            return lambda x: np.maximum(x, 0)
        return super().choose_act(name, alpha, beta)


# cell -> (ONNX op, torch gate block order as read in ONNX order, node attributes)
ONNX_FORM = {
    "elman_tanh": ("RNN", [0], {"activations": ["Tanh"]}),
    "elman_relu": ("RNN", [0], {"activations": ["Relu"]}),
    "lstm": ("LSTM", [0, 3, 1, 2], {}),
    "lstm_peephole": ("LSTM", [0, 3, 1, 2], {}),
    "gru": ("GRU", [1, 0, 2], {"linear_before_reset": 1}),
    "gru_cho": ("GRU", [1, 0, 2], {"linear_before_reset": 0}),
}


def to_onnx_blocks(t: torch.Tensor, order) -> np.ndarray:
    """Reorder the gate blocks (dim 0) of a torch-layout weight or bias."""
    return torch.cat([t.chunk(len(order))[k] for k in order]).detach().numpy()


def run_onnx_layer(op, attrs, order, model, layer, x, states):
    """One ONNX node for one layer of `model`. x (T, B, I); states: list of (D, B, H) initial states."""
    D = 2 if model.bidirectional else 1
    sfx = [f"_l{layer}", f"_l{layer}_reverse"][:D]
    get = lambda name, s: getattr(model, name + s)  # noqa: E731
    feeds = {
        "X": x,
        "W": np.stack([to_onnx_blocks(get("weight_ih", s), order) for s in sfx]),
        "R": np.stack([to_onnx_blocks(get("weight_hh", s), order) for s in sfx]),
        "B": np.stack([np.concatenate([to_onnx_blocks(get("bias_ih", s), order),
                                       to_onnx_blocks(get("bias_hh", s), order)]) for s in sfx]),
        "initial_h": states[0],
    }
    inputs = ["X", "W", "R", "B", "", "initial_h"]
    outputs = ["Y", "Y_h"]
    if op == "LSTM":
        feeds["initial_c"] = states[1]
        inputs.append("initial_c")
        outputs.append("Y_c")
        if model.peephole:
            feeds["P"] = np.stack([to_onnx_blocks(get("weight_ch", s), [0, 2, 1]) for s in sfx])
            inputs.append("P")
    node = helper.make_node(op, inputs, outputs, hidden_size=model.hidden_size,
                            direction="bidirectional" if D == 2 else "forward", **attrs)
    graph = helper.make_graph(
        [node], "layer",
        [helper.make_tensor_value_info(k, TensorProto.DOUBLE, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(k, TensorProto.DOUBLE, None) for k in outputs])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    y, *finals = ReferenceEvaluator(onnx_model, new_ops=[RNN]).run(None, feeds)
    return y.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1), finals  # (T, B, D*H)


def run_onnx(cell, model, x, hx):
    """The whole stack through ONNX nodes: [output (T, B, D*H), *final states (D*L, B, H)]."""
    op, order, attrs = ONNX_FORM[cell]
    D, L = (2 if model.bidirectional else 1), model.num_layers
    states = [s.detach().numpy() for s in ([hx] if torch.is_tensor(hx) else hx)]
    y, finals = x.detach().numpy(), []
    for layer in range(L):
        y, fin = run_onnx_layer(op, attrs, order, model, layer, y,
                                [s[layer * D:(layer + 1) * D] for s in states])
        finals.append(fin)
    return [torch.from_numpy(np.ascontiguousarray(y))] + \
        [torch.from_numpy(np.concatenate([f[k] for f in finals])) for k in range(len(states))]


def case(cell, bidirectional, num_layers, backend):
    model = make(cell, num_layers=num_layers, bidirectional=bidirectional, backend=backend)
    return model, randn(T, B, INPUT_SIZE), random_state(model, B)


@functools.lru_cache(maxsize=None)
def onnx_result(cell, bidirectional, num_layers):
    """The ONNX side of a case (the same seeded weights and data whatever the backend)."""
    return run_onnx(cell, *case(cell, bidirectional, num_layers, None))


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("cell, backend", cell_backends(ONNX_FORM))
def test_matches_onnx_reference(cell, backend, bidirectional, num_layers):
    model, x, hx = case(cell, bidirectional, num_layers, backend)
    with torch.no_grad():
        assert_all_close(flat(model(x, hx)), onnx_result(cell, bidirectional, num_layers))


def test_peepholes_change_the_numbers():
    """With the peephole weights zeroed the peephole LSTM is the plain one, and with them not
    zeroed it is not, so the comparison above sees the peepholes."""
    model = make("lstm_peephole", backend="reference")
    plain = make("lstm", backend="reference")
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("weight_ch")})
    x = randn(T, B, INPUT_SIZE)
    with torch.no_grad():
        assert (model(x)[0] - plain(x)[0]).abs().max() > 1e-3
        for name in ("weight_ch_l0",):
            getattr(model, name).zero_()
        assert_all_close(flat(model(x)), flat(plain(x)))


def test_original_gru_is_not_torch_form():
    """The two GRU forms give different numbers, so the comparisons above tell them apart."""
    model = make("gru_cho", backend="reference")
    x = randn(T, B, INPUT_SIZE)
    hx = random_state(model, B)
    with torch.no_grad():
        ours = model(x, hx)[0]
    other = run_onnx("gru", model, x, hx)[0]
    assert (ours - other).abs().max() > 1e-3
