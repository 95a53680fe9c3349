"""The usage patterns of a language-model client such as pytorch/examples' word_language_model
(run for real by tools/clients/word_language_model.py): an encoder / recurrent / decoder model,
the initial state made from ``next(self.parameters())``, the state detached between batches,
``flatten_parameters()``, gradient-norm clipping, a hand-written SGD step, whole-model
``torch.save`` / ``torch.load`` under torch's default weights-only loading, and the weight-drop
pattern of AWD-LSTM (a recurrent weight replaced by a dropped-out plain tensor before each
forward).  Every test runs with torch.nn's classes too, which proves it right, and rnnkit's
training must give torch.nn's numbers.
"""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnkit

F64 = torch.float64
KINDS = {"LSTM": (nn.LSTM, rnnkit.LSTM), "GRU": (nn.GRU, rnnkit.GRU), "RNN_TANH": (nn.RNN, rnnkit.RNN)}
IMPLS = ("torch", "rnnkit")
V, E, H, L, T, B = 17, 6, 5, 2, 7, 3


class LanguageModel(nn.Module):
    """Token ids (T, B) -> log-probabilities (T*B, V) and the final state."""

    def __init__(self, kind: str, impl: str, dropout: float = 0.0):
        super().__init__()
        self.kind = kind
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(V, E)
        self.rnn = KINDS[kind][IMPLS.index(impl)](E, H, L, dropout=dropout)
        self.decoder = nn.Linear(H, V)

    def forward(self, tokens, state):
        out, state = self.rnn(self.drop(self.encoder(tokens)), state)
        return F.log_softmax(self.decoder(self.drop(out)).view(-1, V), dim=1), state

    def init_hidden(self, batch: int):
        like = next(self.parameters())                             # the model's dtype and device
        zeros = like.new_zeros(L, batch, H)
        return (zeros, like.new_zeros(L, batch, H)) if self.kind == "LSTM" else zeros


def detach(state):
    return state.detach() if isinstance(state, torch.Tensor) else tuple(detach(s) for s in state)


def model(kind: str, impl: str, dropout: float = 0.0) -> LanguageModel:
    torch.manual_seed(0)                                           # same draws: torch's init order is ours
    return LanguageModel(kind, impl, dropout).to(F64)


def stream(n_batches: int):
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, V, (n_batches * T + 1, B), generator=g)
    return [(data[k * T:(k + 1) * T], data[k * T + 1:(k + 1) * T + 1].reshape(-1)) for k in range(n_batches)]


def train(net: LanguageModel, batches, lr=2.0, clip=0.25, seed=2):
    """Truncated BPTT over consecutive batches; the loss of each."""
    torch.manual_seed(seed)
    net.train()
    state, losses = net.init_hidden(B), []
    for tokens, target in batches:
        state = detach(state)
        net.rnn.flatten_parameters()
        net.zero_grad()
        out, state = net(tokens, state)
        loss = F.nll_loss(out, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        for p in net.parameters():
            p.data.add_(p.grad, alpha=-lr)
        losses.append(loss.item())
    return losses


def evaluate(net: LanguageModel, batches) -> float:
    net.eval()
    state, total = net.init_hidden(B), 0.0
    with torch.no_grad():
        for tokens, target in batches:
            out, state = net(tokens, state)
            state = detach(state)
            total += F.nll_loss(out, target).item()
    return total / len(batches)


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_bptt_training_gives_torchs_losses(kind):
    batches = stream(6)
    nets = {impl: model(kind, impl, dropout=0.3) for impl in IMPLS}
    assert all(torch.equal(a, b) for a, b in zip(nets["torch"].state_dict().values(), nets["rnnkit"].state_dict().values()))
    losses = {impl: train(net, batches) for impl, net in nets.items()}
    assert losses["rnnkit"] == pytest.approx(losses["torch"], rel=1e-9, abs=1e-12)
    for (name, a), b in zip(nets["torch"].named_parameters(), nets["rnnkit"].parameters()):
        torch.testing.assert_close(b, a, msg=name)
    assert evaluate(nets["rnnkit"], batches) == pytest.approx(evaluate(nets["torch"], batches), rel=1e-9)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_client_checks_and_weight_lists(kind, impl):
    net = model(kind, impl)
    assert isinstance(net.rnn, nn.RNNBase)
    names = [[n for n, _ in net.rnn.named_parameters() if n.endswith(f"_l{k}")] for k in range(L)]
    assert [[p.shape for p in ws] for ws in net.rnn.all_weights] == [[getattr(net.rnn, n).shape for n in ws] for ws in names]
    assert all(w is getattr(net.rnn, n) for w, n in zip(net.rnn._flat_weights, net.rnn._flat_weights_names))
    state = net.init_hidden(B)
    assert all(s.dtype == F64 for s in (state if isinstance(state, tuple) else (state,)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_whole_model_save_and_default_load(kind, impl):
    batches = stream(3)
    net = model(kind, impl, dropout=0.2)
    train(net, batches[:2])
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    # The container's classes are the client's to allow; rnnkit allows its own on import.
    allowed = [LanguageModel, nn.Dropout, nn.Embedding, nn.Linear, nn.LSTM, nn.GRU, nn.RNN]
    with torch.serialization.safe_globals(allowed):
        loaded = torch.load(buf)                                   # torch's default: weights_only=True
    assert type(loaded.rnn) is type(net.rnn)
    loaded.rnn.flatten_parameters()
    assert evaluate(loaded, batches) == evaluate(net, batches)
    assert train(loaded, batches[2:]) == train(net, batches[2:])   # it trains on as the original


class WeightDrop(nn.Module):
    """AWD-LSTM's DropConnect on a recurrent weight: the parameter lives as ``<name>_raw`` and a
    dropped-out plain tensor takes the recurrent module's attribute before every forward."""

    def __init__(self, rnn: nn.Module, name: str, p: float):
        super().__init__()
        self.rnn, self.name, self.p = rnn, name, p
        raw = getattr(rnn, name)
        del rnn._parameters[name]
        rnn.register_parameter(name + "_raw", nn.Parameter(raw.detach().clone()))
        if isinstance(rnn, nn.RNNBase):                            # cuDNN would re-flatten the weights
            rnn.flatten_parameters = lambda: None

    def forward(self, *args):
        raw = getattr(self.rnn, self.name + "_raw")
        setattr(self.rnn, self.name, F.dropout(raw, self.p, self.training))
        return self.rnn(*args)


@pytest.mark.parametrize("kind", KINDS)
def test_weight_drop_wrapper(kind):
    torch.manual_seed(0)
    ref = KINDS[kind][0](E, H, L, dtype=F64)
    ours = KINDS[kind][1](E, H, L, dtype=F64)
    ours.load_state_dict(ref.state_dict())
    wrapped = {impl: WeightDrop(m, "weight_hh_l0", 0.5) for impl, m in zip(IMPLS, (ref, ours))}
    x = torch.randn(T, B, E, dtype=F64, generator=torch.Generator().manual_seed(3))
    results = {}
    for impl, w in wrapped.items():
        torch.manual_seed(4)                                       # the same mask for both
        out, _ = w(x)
        out.square().sum().backward()
        results[impl] = (out, w.rnn.weight_hh_l0_raw.grad)
    assert (ours.weight_hh_l0 == 0).any()                          # the dropped weight was used
    for a, b in zip(results["rnnkit"], results["torch"]):
        torch.testing.assert_close(a, b)
