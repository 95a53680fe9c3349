"""rnnkit.noise: the masks of recurrent dropout and zoneout (a counter-based hash keyed by torch's
generator).  The C++ form and the torch-ops form give the same numbers; the draws have the asked
frequency, follow torch's seed, differ between draws, and every layer draws through them."""
import pytest
import torch

import rnnkit
from rnnkit import noise
from rnnkit.backends import cpu

BUILT = cpu.extension() is not None


def without_kernels(monkeypatch):
    monkeypatch.setattr(noise, "_cpu_fill", None)


@pytest.mark.skipif(not BUILT, reason="the C++ kernels did not build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 70001])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.97])
def test_the_kernel_equals_the_definition(n, p, dtype):
    k0, k1 = 4_000_000_000, 123_456_789
    got = torch.full((n,), -1.0, dtype=dtype)
    cpu.extension().bernoulli_hash(got, noise.threshold(p), k0, k1, 2.5)
    want = noise.hashed(n, torch.tensor([k0, k1]), "cpu").lt(noise.threshold(p)).to(dtype) * 2.5
    assert torch.equal(got, want)


@pytest.mark.skipif(not BUILT, reason="the C++ kernels did not build")
def test_loading_the_kernels_hands_their_fill_to_the_draws():
    assert noise._cpu_fill == cpu.extension().bernoulli_hash


def test_the_definition_by_hand():
    """mix, written out in Python integers for a few indices, against the torch-ops form."""
    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)
    k0, k1 = 0xFFFFFFF0, 7
    want = [mix(mix((i + k0) & 0xFFFFFFFF) ^ k1) >> 8 for i in range(40)]
    assert noise.hashed(40, torch.tensor([k0, k1]), "cpu").tolist() == want


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch-ops"])
def test_a_seed_gives_the_same_masks_with_or_without_the_kernels(kernels, monkeypatch):
    torch.manual_seed(3)
    with_them = noise.bernoulli((6, 5, 7), 0.3, torch.empty(0), 2.0)
    if not kernels:
        without_kernels(monkeypatch)
    torch.manual_seed(3)
    again = noise.bernoulli((6, 5, 7), 0.3, torch.empty(0), 2.0)
    assert torch.equal(with_them, again)
    assert with_them.shape == (6, 5, 7) and set(with_them.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(noise.bernoulli((6, 5, 7), 0.3, torch.empty(0), 2.0), again)   # a new draw


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_frequency_and_independence(p):
    torch.manual_seed(0)
    n = 200_000
    m = noise.bernoulli((n,), p, torch.empty(0, dtype=torch.float64))
    assert abs(m.mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5
    both = (m[1:] * m[:-1]).mean().item()          # neighbours independent: P(both) = p^2
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / n) ** 0.5
    other = noise.bernoulli((n,), p, torch.empty(0, dtype=torch.float64))
    assert abs((m * other).mean().item() - p * p) < 5 * (p * p * (1 - p * p) / n) ** 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_masks_are_the_same_draws(dtype):
    """A model run in bfloat16 or float16 (the reference backend) draws through the torch-ops form."""
    torch.manual_seed(2)
    want = noise.bernoulli((5, 3, 9), 0.4, torch.empty(0), 2.0)
    torch.manual_seed(2)
    got = noise.bernoulli((5, 3, 9), 0.4, torch.empty(0, dtype=dtype), 2.0)
    assert got.dtype == dtype and torch.equal(got.float(), want)
    model = rnnkit.LSTM(3, 4, zoneout=0.3, recurrent_dropout=0.2).to(dtype)
    out, _ = model(torch.randn(5, 2, 3, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_dtype_and_edges():
    like = torch.empty(0, dtype=torch.float64)
    assert noise.bernoulli((3, 4), 0.5, like).dtype == torch.float64
    assert noise.bernoulli((0, 4), 0.5, like).shape == (0, 4)
    assert noise.bernoulli((100,), 0.0, like).sum() == 0
    assert noise.threshold(1.0) == 1 << 24


def test_too_many_elements_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(noise, "MAX_ELEMENTS", 10)
    with pytest.raises(ValueError, match=r"shape: expected at most 2\^32 elements, got \(3, 4\)"):
        noise.bernoulli((3, 4), 0.5, torch.empty(0))


@pytest.mark.parametrize("cls", [rnnkit.Elman, rnnkit.LSTM, rnnkit.GRU])
def test_layers_draw_their_masks_here(cls):
    """A zoneout layer's z_t and a dropout mask are this module's draws under the same seed."""
    model = cls(3, 4, zoneout=0.4, recurrent_dropout=0.25)
    torch.manual_seed(9)
    drawn = model.cell.draw_noise(5, 2, torch.empty(0))
    torch.manual_seed(9)
    drop = noise.bernoulli((2, 4), 0.75, torch.empty(0), 1 / 0.75)
    zs = [noise.bernoulli((5, 2, s), 0.4, torch.empty(0)) for s in model.cell.state_sizes()]
    assert torch.equal(drawn[0], drop.expand(5, 2, 4))
    assert all(torch.equal(a, b) for a, b in zip(drawn[1:], zs))
