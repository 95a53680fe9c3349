"""The C++ kernels' buffer cache (csrc/pool.h): freed (T, B, .) buffers are kept for the next call
up to a limit, dropped oldest first, released by rnnkit.backends.cpu.empty_cache(); the tensors
are ordinary (resizable) CPU tensors; the cache changes no number."""
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

import rnnkit
from rnnkit.backends import cpu

pytestmark = pytest.mark.skipif(cpu.extension() is None, reason="the C++ kernels did not build")
T, B, H = 64, 8, 64                       # (T, B, 4H) float32 = 512 KiB: above the pool's 64 KiB floor


def step(model, x):
    model(x)[0].sum().backward()


def test_freed_buffers_are_kept_and_released():
    ext = cpu.extension()
    cpu.empty_cache()
    assert ext.pool_cached() == 0
    model, x = rnnkit.LSTM(H, H, backend="cpu"), torch.randn(T, B, H)
    step(model, x)
    kept = ext.pool_cached()
    assert kept >= T * B * 4 * H * 4                      # at least the gates' buffer came back
    step(model, x)
    assert ext.pool_cached() == kept                      # the next call took the same blocks again
    assert cpu.empty_cache() == kept and ext.pool_cached() == 0


def test_outputs_are_ordinary_resizable_tensors():
    cpu.empty_cache()
    with torch.no_grad():
        out, _ = rnnkit.LSTM(H, H, backend="cpu")(torch.randn(T, B, H))
        want = out.clone()
    out.resize_(2 * T, B, H)                               # grows through the same allocator
    assert torch.equal(out[:T], want)
    out.resize_(1, B, H)
    assert torch.equal(out[0], want[0])
    del out
    assert cpu.extension().pool_cached() > 0


def test_buffers_freed_on_other_threads():
    cpu.empty_cache()
    with torch.no_grad():
        outs = [rnnkit.Elman(H, H, backend="cpu")(torch.randn(T, B, H))[0] for _ in range(16)]
    size = outs[0].numel() * 4
    workers = [threading.Thread(target=lambda k=k: outs.__setitem__(k, None)) for k in range(16)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert cpu.extension().pool_cached() % 4096 == 0 and cpu.extension().pool_cached() >= size


def _run(env_mb: str) -> dict:
    code = """
import json, torch, rnnkit
from rnnkit.backends import cpu
ext = cpu.extension()
seen, outs = [], []
torch.manual_seed(0)
model = rnnkit.GRU(64, 64, backend="cpu")
for T in (64, 96, 128, 160, 192):            # new sizes: blocks of older ones dropped oldest first
    x = torch.randn(T, 8, 64)
    out = model(x)[0]
    out.sum().backward()
    outs.append(out.detach()[-1, 0, :4].tolist())
    seen.append(ext.pool_cached())
print(json.dumps({"limit": ext.pool_limit(), "seen": seen, "outs": outs}))
"""
    env = {**os.environ, "RNNKIT_CPU_POOL_MB": env_mb}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_limit_holds_and_the_numbers_do_not_depend_on_the_cache():
    small, off = _run("1"), _run("0")
    assert small["limit"] == 1 << 20 and off["limit"] == 0
    assert max(small["seen"]) <= 1 << 20 and max(small["seen"]) > 0
    assert off["seen"] == [0] * 5
    assert small["outs"] == off["outs"]


def test_empty_cache_never_builds_the_kernels(monkeypatch):
    from rnnkit.backends import _build

    def compile_(native, verbose):
        raise AssertionError("empty_cache started a build")
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setattr(_build, "_compile", compile_)
    assert cpu.empty_cache() == 0


def test_reordered_batches_come_from_the_cache_and_differentiate():
    """A batch with lengths runs longest first: its input and output are reordered into buffers of
    the cache (sequence.batch_rows), with the same numbers, and the reordering's gradient is the
    inverse reordering (gradcheck in float64)."""
    from rnnkit import sequence
    cpu.extension()
    assert sequence._cpu_empty is not None                # registered when the kernels loaded
    x = torch.randn(T, B, H, dtype=torch.float64)
    order = torch.randperm(B)
    cpu.empty_cache()
    got = sequence.batch_rows(x, order)
    assert torch.equal(got, x.index_select(1, order))
    del got
    assert cpu.extension().pool_cached() >= x.numel() * 8  # its buffer came back to the cache
    xs = x[:3, :, :5].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sequence.batch_rows(t, order), (xs,))
    lengths = torch.randint(1, T + 1, (B,))
    model = rnnkit.GRU(H, H, backend="cpu").double()
    xg = x.clone().requires_grad_()
    out, h = model(xg, lengths=lengths)
    (out.square().sum() + h.sum()).backward()
    ref = rnnkit.GRU(H, H, backend="reference").double()
    ref.load_state_dict(model.state_dict())
    xr = x.clone().requires_grad_()
    out_r, h_r = ref(xr, lengths=lengths)
    (out_r.square().sum() + h_r.sum()).backward()
    torch.testing.assert_close(out, out_r)
    torch.testing.assert_close(xg.grad, xr.grad)
