"""Packing the trace small: per-unit linear quantisation, zlib, base64.

A block is one (layer, direction, trace name): H units over T steps, stored unit-major as
H*T unsigned bytes q, each meaning ``lo[u] + q * step[u]`` with ``step[u] = (hi[u] - lo[u]) /
(2**bits - 1)``; a value read back is within step[u] / 2 of the traced one.  All blocks are
concatenated, zlib-compressed (the page inflates them with the browser's DecompressionStream)
and base64-encoded.  ``pack`` takes the most bits (8 down to 4) whose blob fits the budget.
"""
from __future__ import annotations

import base64
import json
import zlib
from typing import Dict, List, Tuple

import numpy as np

BITS = (8, 7, 6, 5, 4)


def quantise(a: np.ndarray, bits: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a (T, H) float -> (q (H, T) uint8, lo (H,), step (H,)); a constant unit gets step 0."""
    lo = a.min(0).astype(np.float32).astype(np.float64)       # float32: what the page reads
    step = ((a.max(0) - lo) / (2 ** bits - 1)).astype(np.float32).astype(np.float64)
    safe = np.where(step > 0, step, 1.0)
    q = np.rint((a - lo) / safe).clip(0, 2 ** bits - 1).astype(np.uint8)
    return np.ascontiguousarray(q.T), lo, step


def dequantise(q: np.ndarray, lo: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The inverse up to step / 2: q (H, T) -> (T, H) float64."""
    return (lo[:, None] + q.astype(np.float64) * step[:, None]).T


def _blob(blocks: List[np.ndarray], bits: int) -> Tuple[str, List[dict]]:
    """Quantise and pack (T, H_k) blocks -> (base64 text, per-block {offset, units, lo, step, scale})."""
    parts, meta, offset = [], [], 0
    for a in blocks:
        q, lo, step = quantise(a, bits)
        parts.append(q.tobytes())
        meta.append({"offset": offset, "units": int(q.shape[0]), "lo": _floats(lo), "step": _floats(step),
                     "scale": colour_scale(a)})
        offset += q.size
    return base64.b64encode(zlib.compress(b"".join(parts), 6)).decode("ascii"), meta


def colour_scale(a: np.ndarray) -> float:
    """|value| that the page's colours saturate at: the 98th percentile, so that a few large
    memory-cell values do not wash out the rest (1 when all are zero)."""
    return float(np.percentile(np.abs(a), 98)) or 1.0


def pack(blocks: List[np.ndarray], budget: int) -> Dict:
    """{bits, blob, blocks} for the most bits in BITS whose blob and block list take at most
    ``budget`` characters as JSON (BITS[-1] when none does)."""
    for bits in BITS:
        blob, meta = _blob(blocks, bits)
        if len(blob) + len(json.dumps(meta, separators=(",", ":"))) <= budget:
            break
    return {"bits": bits, "blob": blob, "blocks": meta}


def unpack(packed: Dict, steps: int) -> List[np.ndarray]:
    """The inverse of ``pack`` up to step / 2: the (T, H_k) blocks, as the page reads them."""
    raw = np.frombuffer(zlib.decompress(base64.b64decode(packed["blob"])), dtype=np.uint8)
    return [dequantise(raw[m["offset"]:m["offset"] + m["units"] * steps].reshape(m["units"], steps),
                       np.asarray(m["lo"]), np.asarray(m["step"])) for m in packed["blocks"]]


def _floats(a: np.ndarray) -> List[float]:
    """float32-exact values as JSON numbers (what the page computes with)."""
    return [float(v) for v in np.asarray(a, dtype=np.float32)]


def rounded(a, digits: int = 6) -> list:
    """Nested lists of numbers to ``digits`` significant digits (NaN and inf as None)."""
    arr = np.asarray(a, dtype=np.float64)
    out = np.vectorize(lambda v: float(f"{v:.{digits}g}") if np.isfinite(v) else None, otypes=[object])(arr)
    return out.tolist() if arr.ndim else out.item()
