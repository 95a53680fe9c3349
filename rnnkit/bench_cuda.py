"""``rnnkit bench --device cuda``: rnnkit on a GPU (its ``auto`` backend there: triton) against torch.nn
(cuDNN) in the same process, on the same card, the same weights and inputs, in the same dtype.

Rows, per cell, size and dtype (float32 with TF32 as torch's matmul setting says, bfloat16, float16):

    fwd        forward under torch.no_grad()
    fwd+bwd    forward, sum of the output, backward (input and weight gradients)
    first call the first forward+backward on this shape in this process (Triton compiles then:
               seconds, whatever the cache held), rnnkit only; the baseline column is cuDNN's first call

Times are medians of interleaved repeats, each bracketed by ``torch.cuda.synchronize()``.  The
Jordan network has no torch.nn twin: its baseline is a plain PyTorch loop of the same math
(tanh hidden, tanh output, O = H), differentiated by autograd.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Callable, Dict, List

import torch
from torch import nn

from .bench import (Case, JordanLoop, Row, _fwd, _fwd_bwd, _gflops, _TORCH, checked_cells, flops, interleaved_medians,
                    write)
from .convert import from_torch
from .layers import Jordan

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FULL_SIZES = ((1024, 16, 768), (128, 8, 128), (128, 64, 512), (128, 256, 512))   # (T, B, H = I)
QUICK_SIZES = ((8, 2, 16),)


def _synced(f: Callable[[], None]) -> Callable[[], None]:
    def run():
        f()
        torch.cuda.synchronize()
    return run


def _models(case: Case, dtype: torch.dtype, device):
    """(baseline name, baseline module, rnnkit module) with the same weights, on the device in dtype."""
    torch.manual_seed(0)
    if case.cell == "jordan":
        rk = Jordan(case.H, case.H, case.H, output_activation="tanh")
        base, name = JordanLoop(rk), "plain loop"
    else:
        base, name = _TORCH[case.cell](case.H, case.H), "torch.nn (cuDNN)"
        rk = from_torch(base)
    return name, base.to(device, dtype), rk.to(device, dtype)


def bench_case(case: Case, dtype_name: str, repeats: int, device) -> List[Row]:
    dtype = DTYPES[dtype_name]
    name, base, rk = _models(case, dtype, device)
    x = torch.randn(case.T, case.B, case.H, device=device, dtype=dtype)
    f = flops(case, case.H if case.cell == "jordan" else 0)
    label = f"{case.label} {dtype_name}"
    rows = []
    first = {}
    for who, m in ((name, base), ("rnnkit", rk)):
        t0 = time.perf_counter()
        _synced(_fwd_bwd(m, (x.clone().requires_grad_(),)))()
        first[who] = (time.perf_counter() - t0) * 1e3
    rows.append(Row(label, case.cell, "first call", name, first[name], first["rnnkit"],
                    first[name] / first["rnnkit"]))
    for mode, make, fl in (("fwd", _fwd, f), ("fwd+bwd", _fwd_bwd, 3 * f)):
        xin = x.clone().requires_grad_(mode == "fwd+bwd")
        fns: Dict[str, Callable[[], None]] = {name: _synced(make(base, (xin,))), "rnnkit": _synced(make(rk, (xin,)))}
        ms = interleaved_medians(fns, repeats)
        rows.append(Row(label, case.cell, mode, name, ms[name], ms["rnnkit"], ms[name] / ms["rnnkit"],
                        _gflops(fl, ms[name]), _gflops(fl, ms["rnnkit"])))
    return rows


def cases(quick: bool, cells) -> List[Case]:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    first = ("lstm", "gru", "rnn", "jordan")                  # the targets' order: LSTM first
    return [Case(c, T, B, H) for T, B, H in sizes for c in sorted(cells, key=first.index)]


def machine(device) -> dict:
    p = torch.cuda.get_device_properties(device)
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    return {"gpu": p.name, "sms": p.multi_processor_count, "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": tv, "cudnn": torch.backends.cudnn.version(), "tf32": torch.backends.cuda.matmul.allow_tf32}


def run_all(quick: bool, repeats: int, cells, dtypes, log=lambda s: None, device="cuda") -> dict:
    rows: List[Row] = []
    for case in cases(quick, cells):
        for d in dtypes:
            try:
                new = bench_case(case, d, repeats, torch.device(device))
            except Exception as e:                # one failing row must not lose the table
                log(f"{case.label} {d}: failed: {type(e).__name__}: {e}")
                continue
            rows += new
            for r in new:
                log(format_row(r))
    return {"machine": machine(torch.device(device)), "repeats": repeats, "rows": [asdict(r) for r in rows]}


def format_row(r: Row) -> str:
    return (f"{r.case:34s} {r.mode:10s} {r.baseline:18s} {r.baseline_ms:10.3f} {r.rnnkit_ms:10.3f} "
            f"{r.ratio:6.2f}")


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"GPU: {m['gpu']} ({m['sms']} SMs), torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, "
             f"Triton {m['triton']}, TF32 matmul {m['tf32']}; median of {result['repeats']} interleaved repeats.",
             "", "| case | mode | baseline | baseline ms | rnnkit ms | ratio baseline/rnnkit |",
             "|---|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['mode']} | {r['baseline']} | {r['baseline_ms']:.3f} | "
                     f"{r['rnnkit_ms']:.3f} | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    """The GPU table (``rnnkit bench --device cuda``)."""
    cells = checked_cells(args)
    if not torch.cuda.is_available():
        raise SystemExit("rnnkit bench: --device cuda: expected a CUDA device, but torch sees none")
    dtypes = tuple(d for d in args.dtypes.split(",") if d)
    if not dtypes or any(d not in DTYPES for d in dtypes):
        raise SystemExit(f"rnnkit bench: --dtypes: expected a subset of {tuple(DTYPES)}, got {args.dtypes!r}")
    print(json.dumps(machine(torch.device("cuda"))), flush=True)
    write(args, run_all(args.quick, args.repeats, cells, dtypes, log=lambda s: print(s, flush=True)), markdown)
    return 0
