"""Helpers for the page tests: read a page's data block and its packed trace back in Python."""
from __future__ import annotations

import json
import re
from typing import Dict, Tuple

import numpy as np

from rnnkit.view import encode


def page_data(html: str) -> dict:
    """The JSON data block of a page."""
    m = re.search(r'<script id="rnnkit-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "the page has no data block"
    return json.loads(m.group(1))


def trace_blocks(data: dict) -> Dict[Tuple[int, int, str], np.ndarray]:
    """{(layer, direction, name): (T, H)} as the page reads them (within half a step)."""
    m = data["model"]
    keys = [(l, d, n) for l in range(m["layers"]) for d in range(m["directions"]) for n in m["names"]]
    return dict(zip(keys, encode.unpack(data["trace"], data["steps"])))
