"""`rnnkit experiments --quick` regenerates the report: files, tables, finite numbers."""
import math
import re

import pytest

from rnnkit.cli import main
from rnnkit.experiments import EXPERIMENTS, REPORT, run_experiments


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    return out, run_experiments(None, quick=True, out=str(out))


def test_report_has_every_section_table_and_figure(quick):
    out, _ = quick
    text = (out / REPORT).read_text()
    assert text.count("\n## ") == len(EXPERIMENTS)
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(refs) >= len(EXPERIMENTS)
    for ref in refs:
        assert (out / ref).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in EXPERIMENTS:
        section = (out / "experiments" / f"{name}.md").read_text()
        assert re.search(r"^\|---", section, flags=re.M), name
        assert "**What happened:**" in section and "seed 0" in section


def test_reported_numbers_are_finite(quick):
    _, sections = quick
    assert set(sections) == set(EXPERIMENTS)
    for name, sec in sections.items():
        assert sec.numbers, name
        assert all(math.isfinite(v) for v in sec.numbers), name


def test_cli_subset_keeps_other_sections(quick):
    out, _ = quick
    before = (out / "experiments" / "memory.md").read_text()
    assert main(["experiments", "clipping", "--quick", "--out", str(out)]) == 0
    assert (out / "experiments" / "memory.md").read_text() == before
    assert "## 1. Long time lags" in (out / REPORT).read_text()


def test_unknown_name_is_one_line_error(tmp_path, capsys):
    assert main(["experiments", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nope" in err
    assert not (tmp_path / REPORT).exists()
