"""The prepared GPU check of the triton backend: one script, one device session, within 6 minutes.

    python tools/gpu_check.py OUT_DIR            everything below, each part in a subprocess with a timeout
    python tools/gpu_check.py OUT_DIR parity     every cell form (bidirectional, 2 layers, lengths) at T=64:
                                                 triton against the reference backend on the GPU (float32,
                                                 TF32 off; float64) and against cuDNN for torch.nn's cells;
                                                 bfloat16 / float16 against float32
    python tools/gpu_check.py OUT_DIR guard      the grid barrier under load: more tiles than SMs, and a
                                                 second stream busy at the same time; a hang is a timeout
    python tools/gpu_check.py OUT_DIR bench      ``rnnkit bench --device cuda`` (JSON + Markdown)

Triton's cache goes to a fresh folder, so the bench's first-call column is a compile on an empty
cache.  Every part writes what it found to OUT_DIR as it goes; a failing part does not stop the others.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"guard": 40, "parity": 150, "bench": 220}          # seconds each


def _parity(out: Path) -> int:
    import torch
    from rnnkit import backends, registry
    from rnnkit.convert import from_torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # RNNKIT_CHECK_DEVICE=cpu with TRITON_INTERPRET=1: a dry run of this script at tiny sizes, no GPU
    dev = torch.device(os.environ.get("RNNKIT_CHECK_DEVICE", "cuda"))
    T, B, I, H = (64, 16, 24, 72) if dev.type == "cuda" else (4, 3, 5, 6)
    lengths = torch.randint(T // 2, T + 1, (B,))
    lengths[0] = T
    lines, failed = [], 0

    def grads(m, x, dtype, lens):
        x = x.to(dtype).detach().requires_grad_()
        torch.manual_seed(11)               # forms with noise: both sides draw the same float32 masks
        out, _ = m(x) if lens is None else m(x, None, lens)
        out.float().pow(2).sum().backward()
        return [out.float()] + [x.grad.float()] + [p.grad.float() for p in m.parameters()]

    def error(ours, theirs):
        return max(((a - b).abs().max() / (b.abs().max() + 1e-6)).item() for a, b in zip(ours, theirs))

    def compare(name, ours, theirs, tol):
        nonlocal failed
        err = error(ours, theirs)
        ok = err <= tol
        failed += not ok
        lines.append(f"{'PASS' if ok else 'FAIL'} {name}: max relative error {err:.2e} (tolerance {tol:.1e})")
        print(lines[-1], flush=True)

    for form, (entry, kw) in registry.forms().items():
        torch.manual_seed(0)
        ref = entry.layer(I, H, num_layers=2, bidirectional=True, backend="reference", **kw).to(dev)
        if not backends.get("triton").supports(ref.cell, dev, torch.float32):
            lines.append(f"SKIP {form}: {backends.get('triton').supports(ref.cell, dev, torch.float32).reason}")
            continue
        x = torch.randn(T, B, I, device=dev)
        for lens in (None, lengths):
            tag = "lengths" if lens is not None else "full"
            # every form in float32 and bfloat16; float64 and float16 for one form of each cell
            dtypes = [(torch.float32, 1e-4)] + ([(torch.bfloat16, 8e-2)] if lens is not None else [])
            if lens is not None and form in ("lstm", "gru", "elman_tanh", "jordan_identity"):
                dtypes += [(torch.float64, 1e-10), (torch.float16, 2e-2)]
            for dtype, tol in dtypes:
                try:
                    tri = entry.layer(I, H, num_layers=2, bidirectional=True, backend="triton", **kw).to(dev, dtype)
                    tri.load_state_dict(ref.state_dict())
                    base = ref.to(torch.float64 if dtype == torch.float64 else torch.float32)
                    # masks drawn in another dtype are other masks: 16-bit noisy forms compare in eval
                    noisy_eval = bool(ref.cell.noise_names) and dtype != base.weight_ih_l0.dtype
                    tri.train(not noisy_eval), base.train(not noisy_eval)
                    for p in base.parameters():
                        p.grad = None
                    want = grads(base, x, next(base.parameters()).dtype, lens)
                    if dtype in (torch.bfloat16, torch.float16):
                        # 16-bit rounding grows with an unbounded relu: allow twice what the reference
                        # backend itself loses in that dtype (its state is 16-bit too)
                        ref16 = entry.layer(I, H, num_layers=2, bidirectional=True, backend="reference",
                                            **kw).to(dev, dtype)
                        ref16.load_state_dict(ref.state_dict())
                        ref16.train(not noisy_eval)
                        tol = max(tol, 2 * error(grads(ref16, x, dtype, lens), want))
                    t0 = time.time()
                    got = grads(tri, x, dtype, lens)
                    compare(f"{form} {tag} {dtype} vs reference ({time.time() - t0:.1f}s)", got, want, tol)
                except Exception as e:
                    failed += 1
                    lines.append(f"FAIL {form} {tag} {dtype}: {type(e).__name__}: {e}")
                    print(lines[-1], flush=True)
    for form, (entry, kw) in registry.twin_forms().items():
        torch.manual_seed(0)
        tm = entry.torch_twin(I, H, num_layers=2, bidirectional=True, **kw).to(dev)
        if not backends.get("triton").supports(from_torch(tm).cell, dev, torch.float32):
            continue
        ours = from_torch(tm, backend="triton").to(dev)
        x = torch.randn(T, B, I, device=dev)
        try:
            want = [torch.nn.utils.rnn.pad_packed_sequence(tm(torch.nn.utils.rnn.pack_padded_sequence(
                xx, lengths, enforce_sorted=False))[0], total_length=T)[0] for xx in [x]]
            got = [ours(x, None, lengths)[0]]
            compare(f"{form} lengths float32 vs cuDNN (forward)", got, want, 1e-4)
            want = grads(tm.float(), x, torch.float32, None)[:2]
            got = grads(ours, x, torch.float32, None)[:2]
            compare(f"{form} full float32 vs cuDNN (output, input gradient)", got, want, 1e-4)
        except Exception as e:
            failed += 1
            lines.append(f"FAIL cuDNN {form}: {type(e).__name__}: {e}")
            print(lines[-1], flush=True)
    (out / "parity.txt").write_text("\n".join(lines) + f"\n{failed} failed\n")
    return 1 if failed else 0


def _guard(out: Path) -> int:
    """Persistent launches with more tiles than SMs and a concurrent stream: finishing is the test."""
    import torch
    from rnnkit import LSTM, GRU
    dev = torch.device("cuda")
    side = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device=dev)
    report = []
    for cls, T, B, H in ((LSTM, 16, 512, 1024), (GRU, 16, 1024, 512)):     # 256 tiles each: > SMs
        m = cls(H, H, backend="triton").to(dev, torch.bfloat16)
        x = torch.randn(T, B, H, device=dev, dtype=torch.bfloat16, requires_grad=True)
        with torch.cuda.stream(side):
            for _ in range(20):
                a = a @ a / 64.0                        # keeps SMs busy while the barrier kernel starts
        t0 = time.time()
        m(x)[0].float().sum().backward()
        torch.cuda.synchronize()
        report.append(f"{cls.__name__} T{T} B{B} H{H} bf16 fwd+bwd with a busy stream: finished in "
                      f"{time.time() - t0:.2f}s, output finite: {bool(torch.isfinite(x.grad).all())}")
        print(report[-1], flush=True)
    (out / "guard.txt").write_text("\n".join(report) + "\n")
    return 0


def _bench(out: Path) -> int:
    """The table of ``rnnkit bench --device cuda`` (called directly: no CLI imports needed on the GPU image)."""
    from rnnkit import bench_cuda
    from rnnkit.bench import CELLS
    sizes = os.environ.get("RNNKIT_CHECK_SIZES")                  # e.g. "2": the first two sizes only
    if sizes:
        bench_cuda.FULL_SIZES = bench_cuda.FULL_SIZES[:int(sizes)]
    result = bench_cuda.run_all(False, 5, CELLS, tuple(bench_cuda.DTYPES), log=lambda s: print(s, flush=True))
    (out / "bench_cuda.json").write_text(json.dumps(result, indent=1))
    (out / "bench_cuda.md").write_text(bench_cuda.markdown(result))
    return 0


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) > 2:
        return {"parity": _parity, "guard": _guard, "bench": _bench}[sys.argv[2]](out)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, TRITON_CACHE_DIR=str(Path("/tmp") / f"rnnkit-triton-{os.getpid()}"))
    summary = {}
    for part, limit in PARTS.items():
        t0 = time.time()
        with open(out / f"{part}.log", "w") as log:
            try:
                rc = subprocess.call([sys.executable, __file__, str(out), part], env=env, cwd=ROOT,
                                     stdout=log, stderr=subprocess.STDOUT, timeout=limit)
            except subprocess.TimeoutExpired:
                rc = "timeout"
        summary[part] = {"rc": rc, "seconds": round(time.time() - t0, 1)}
        print(part, summary[part], flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
