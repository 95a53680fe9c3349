"""rnnkit.from_torch / to_torch (rnnkit/convert.py and the layers' ``torch_twin``): a round trip
keeps the configuration and the numbers; the forms torch.nn cannot build are refused."""
import pytest
from torch import nn

import rnnkit
from helpers import CELLS, INPUT_SIZE, TORCH_CELLS, assert_all_close, flat, make, make_torch_pair, randn

T, B = 4, 2


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_from_torch_and_to_torch(cell):
    ref, _ = make_torch_pair(cell, backend="reference", num_layers=2, bidirectional=True,
                             batch_first=True, dropout=0.25)
    ref.eval()
    ours = rnnkit.from_torch(ref, backend="autograd")
    assert type(ours) is TORCH_CELLS[cell][0] and ours.backend == "autograd"
    assert not ours.training and ours.dropout == 0.25 and ours.batch_first
    assert getattr(ours, "nonlinearity", None) == getattr(ref, "nonlinearity", None)
    back = ours.to_torch()
    assert type(back) is type(ref) and not back.training
    assert str(back) == str(ref)
    x = randn(B, T, INPUT_SIZE)
    assert_all_close(flat(ours(x)), flat(ref(x)))
    assert_all_close(flat(back(x)), flat(ref(x)))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(ours.parameters(), ref.parameters()))
    assert_all_close(flat(rnnkit.to_torch(ours)(x)), flat(ref(x)))


def test_conversion_refusals():
    with pytest.raises(ValueError, match="reset_after"):
        rnnkit.GRU(2, 3, reset_after=False).to_torch()
    with pytest.raises(TypeError, match="Jordan"):
        rnnkit.Jordan(2, 3, 2).to_torch()
    with pytest.raises(ValueError, match="peephole"):
        rnnkit.LSTM(2, 3, peephole=True).to_torch()
    with pytest.raises(ValueError, match="zoneout"):
        rnnkit.GRU(2, 3, zoneout=0.1).to_torch()
    with pytest.raises(TypeError, match="module"):
        rnnkit.from_torch(nn.Linear(2, 3))


@pytest.mark.parametrize("cell", [form for form in CELLS if form not in TORCH_CELLS])
def test_forms_without_a_torch_twin_refuse_to_torch(cell):
    with pytest.raises((TypeError, ValueError), match="torch"):
        make(cell).to_torch()
