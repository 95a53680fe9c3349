"""Readers for every data source; each turns bad input into one UserError line.

Nothing here downloads: sunspots ship inside rnnkit (``rnnkit/data``), digits inside
scikit-learn, the UEA/UCR sets inside sktime (the ``rnnkit[uea]`` extra), and CSV and text
files come from the user.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import math
from pathlib import Path
from typing import List, Tuple

import numpy as np

from ..data import SUNSPOTS_CSV
from .errors import UserError


def open_text(path: str, what: str) -> str:
    """The whole file as text, or a UserError saying why not."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {path}: no such file")
    if p.is_dir():
        raise UserError(f"{what} {path}: is a folder, expected a file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"{what} {path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise UserError(f"{what} {path}: is empty")
    return text


DELIMITERS = ",\t;|"      # tried in this order on the first row: comma, tab, semicolon, bar


def delimiter(first_line: str) -> str:
    """The field separator of a CSV from its first row: the first of ``DELIMITERS`` it contains
    outside quotes, else a comma (a one-column file).  Tab- and semicolon-separated exports
    (spreadsheets in locales with a decimal comma) then read as their columns, not as one."""
    bare = "".join(part for k, part in enumerate(first_line.split('"')) if k % 2 == 0)
    return next((d for d in DELIMITERS if d in bare), ",")


def csv_rows(text: str, path: str, gaps_are_errors: bool) -> List[Tuple[int, List[str]]]:
    """The CSV's rows that hold anything, each with its line number in the file (what the error
    messages name).  Blank rows before the first and after the last are dropped; one between
    rows with data is dropped too, or is an error with ``gaps_are_errors`` (in a series it is a
    missing value, and dropping it would join the steps on either side)."""
    first = next((line for line in io.StringIO(text) if line.strip()), "")     # (lazily: no list of lines)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter(first))
    rows, blank = [], None              # blank: the line of the first empty row after data
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                if rows and blank is None:
                    blank = reader.line_num
                continue
            if blank is not None and gaps_are_errors:
                raise UserError(f"--csv {path}: row {blank} is empty, between rows with data (a missing "
                                f"value?); every step needs a number: fill the gap or remove the row")
            blank = None
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise UserError(f"--csv {path}: malformed CSV ({e})") from None
    if not rows:
        raise UserError(f"--csv {path}: has no row with a value")
    return rows


def read_csv_column(path: str, column: str | None) -> Tuple[np.ndarray, List[str]]:
    """One numeric column of a CSV with a header row: (values (N,) float64, labels (N,)).

    Labels are the first column (e.g. dates) unless that is the column read; then row numbers.

    ``column`` may be None when the file has exactly one column.  Fields are separated by a
    comma, tab, semicolon or bar (``delimiter``); an empty row between data rows is an error.
    """
    rows = csv_rows(open_text(path, "--csv"), path, gaps_are_errors=True)
    header = [h.strip() for h in rows[0][1]]
    if column is None:
        if len(header) != 1:
            raise UserError(f"--csv {path}: has {len(header)} columns; choose one with --target "
                            f"({', '.join(header)})")
        column = header[0]
    if column not in header:
        raise UserError(f"--target {column}: no such column in {path} (columns: {', '.join(header)})")
    j = header.index(column)
    if len(rows) < 2:
        raise UserError(f"--csv {path}: has a header but no data rows")
    values, labels = [], []
    for n, (line, row) in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            raise UserError(f"--csv {path}: row {line} has {len(row)} fields, the header has {len(header)}")
        values.append(number(row[j], f"--csv {path}: row {line}, column {column!r}"))
        labels.append(row[0].strip() if j != 0 else str(n))     # else the data row number
    return np.asarray(values, dtype=np.float64), labels


FLOAT32_MAX = float(np.finfo(np.float32).max)


def number(cell: str, where: str) -> float:
    """A CSV cell as a number the network's float32 arithmetic can hold (|v| <= 3.4e38)."""
    try:
        v = float(cell)
    except ValueError:
        hint = " (a decimal comma? write the number with a point)" if _decimal_comma(cell) else ""
        raise UserError(f"{where}: {cell.strip()!r} is not a number{hint}") from None
    if not math.isfinite(v):
        raise UserError(f"{where}: {cell.strip()!r} is not a finite number (NaN or infinity)")
    if abs(v) > FLOAT32_MAX:
        raise UserError(f"{where}: {cell.strip()!r} is beyond float32's range (about 3.4e38), "
                        f"which the network computes in")
    return v


def _decimal_comma(cell: str) -> bool:
    try:
        float(cell.replace(",", "."))
    except ValueError:
        return False
    return cell.count(",") == 1 and "." not in cell


def sunspots() -> Tuple[np.ndarray, np.ndarray]:
    """Yearly sunspot numbers shipped with rnnkit: (years (309,) int, values (309,) float64)."""
    table = np.loadtxt(SUNSPOTS_CSV, delimiter=",", skiprows=1)
    return table[:, 0].astype(int), table[:, 1]


def read_text(path: str) -> str:
    """A UTF-8 text file for the character model."""
    return open_text(path, "--text")


def digits() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (read from its package, no download): (1797, 8, 8) raw
    pixel values 0-16 (the trainer standardises them and keeps the statistics), labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("task digits: needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def _sktime_data_dir() -> Path:
    """sktime's bundled data folder, found without importing sktime (which is slow)."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("this task reads data bundled with sktime: pip install 'rnnkit[uea]'")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def uea(name: str, split: str) -> Tuple[List[np.ndarray], List[str], List[str]]:
    """A UEA/UCR set in sktime's .ts format: (cases, each (T_i, C) float32; labels; class names)."""
    path = _sktime_data_dir() / name / f"{name}_{split}.ts"
    if not path.exists():
        raise UserError(f"task data {name}: {path} is missing from the installed sktime")
    return parse_ts(path.read_text(encoding="utf-8"), str(path))


def parse_ts(text: str, where: str) -> Tuple[List[np.ndarray], List[str], List[str]]:
    """Parse the .ts format: ``@`` header lines, then one case per line, ``dim:dim:...:label``."""
    classes: List[str] = []
    cases, labels = [], []
    in_data = False
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            words = line.split()
            if words[0].lower() == "@classlabel" and len(words) > 2:
                classes = words[2:]
            in_data = words[0].lower() == "@data"
            continue
        *dims, label = line.split(":")
        try:
            chans = [np.array(d.split(","), dtype=np.float32) for d in dims]
        except ValueError:
            raise UserError(f"{where}: line {n}: not a number") from None
        if len({len(c) for c in chans}) != 1:
            raise UserError(f"{where}: line {n}: channels differ in length")
        cases.append(np.stack(chans, axis=1))                       # (T_i, C)
        labels.append(label.strip())
    if not cases:
        raise UserError(f"{where}: no cases")
    return cases, labels, classes or sorted(set(labels))
