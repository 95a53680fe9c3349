"""Per-step signals that units may track: the page ranks units by their correlation with one.

Every function returns {label: (T,) float64 array}.  Input signals describe what the network
reads at step t; target signals what it should produce (callers add their own with ``signals=``).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

MAX_CHANNELS = 16           # input channels / outputs offered as signals (the first ones)


def _inside(text: str, opens: str, closes: str) -> np.ndarray:
    """1 on characters between an opening and its closing mark (nesting counted), else 0."""
    depth, out = 0, np.zeros(len(text))
    for t, ch in enumerate(text):
        if ch in closes and depth > 0:
            depth -= 1
        out[t] = float(depth > 0)
        if ch in opens:
            depth += 1
    return out


def _toggled(text: str, mark: str) -> np.ndarray:
    """1 on characters between two occurrences of ``mark`` (quotes, backticks), else 0."""
    inside, out = False, np.zeros(len(text))
    for t, ch in enumerate(text):
        if ch == mark:
            inside = not inside
        out[t] = float(inside and ch != mark)
    return out


def _position(text: str, breaks: str) -> np.ndarray:
    """Characters since the last character in ``breaks`` (0 on a break)."""
    n, out = 0, np.zeros(len(text))
    for t, ch in enumerate(text):
        n = 0 if ch in breaks else n + 1
        out[t] = n
    return out


def text_signals(text: str) -> Dict[str, np.ndarray]:
    """Karpathy-style features of a character stream (T = len(text))."""
    chars = np.array(list(text), dtype=object)
    is_ = lambda f: np.array([float(f(c)) for c in chars])  # noqa: E731
    return {
        "inside double quotes": _toggled(text, '"'),
        "inside backticks": _toggled(text, "`"),
        "inside ( )": _inside(text, "([{", ")]}"),
        "position in line": _position(text, "\n"),
        "position in word": _position(text, " \n\t"),
        "is space": is_(str.isspace),
        "is letter": is_(str.isalpha),
        "is digit": is_(str.isdigit),
        "is upper case": is_(str.isupper),
        "is punctuation": is_(lambda c: not c.isalnum() and not c.isspace()),
        "next is space": np.r_[is_(str.isspace)[1:], 0.0],
    }


def channel_signals(x: np.ndarray, prefix: str = "input", names: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """x (T, C) -> one signal per channel (the first MAX_CHANNELS), named by ``names`` or index."""
    labels: List[str] = list(names) or [str(k) for k in range(x.shape[1])]
    return {f"{prefix} {labels[k]}": x[:, k].astype(np.float64) for k in range(min(x.shape[1], MAX_CHANNELS))}
