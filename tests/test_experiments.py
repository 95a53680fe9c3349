"""`rnnkit experiments --quick` regenerates the quick report: files, tables, finite numbers; it
writes to a run folder unless told, and never replaces a full report."""
import math
import re
from pathlib import Path

import pytest

from rnnkit.cli import main
from rnnkit.experiments import EXPERIMENTS, QUICK_REPORT, REPORT, run_experiments


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    return out, run_experiments(None, quick=True, out=str(out))


def test_report_has_every_section_table_and_figure(quick):
    out, _ = quick
    text = (out / QUICK_REPORT).read_text()
    assert not (out / REPORT).exists() and not (out / "experiments").exists()
    assert text.count("\n## ") == len(EXPERIMENTS)
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(refs) >= len(EXPERIMENTS)
    for ref in refs:
        assert (out / ref).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in EXPERIMENTS:
        section = (out / "experiments-quick" / f"{name}.md").read_text()
        assert re.search(r"^\|---", section, flags=re.M), name
        assert "**What happened:**" in section and "seed 0" in section


def test_reported_numbers_are_finite(quick):
    _, sections = quick
    assert set(sections) == set(EXPERIMENTS)
    for name, sec in sections.items():
        assert sec.numbers, name
        assert all(math.isfinite(v) for v in sec.numbers), name


def test_cli_subset_keeps_other_sections_and_never_touches_a_full_report(quick):
    out, _ = quick
    (out / REPORT).write_text("the full report\n")
    (out / "experiments").mkdir()
    (out / "experiments" / "clipping.md").write_text("full clipping section\n")
    before = (out / "experiments-quick" / "memory.md").read_text()
    assert main(["experiments", "clipping", "--quick", "--out", str(out)]) == 0
    assert (out / "experiments-quick" / "memory.md").read_text() == before
    assert "## 1. Long time lags" in (out / QUICK_REPORT).read_text()
    assert (out / REPORT).read_text() == "the full report\n"
    assert (out / "experiments" / "clipping.md").read_text() == "full clipping section\n"
    assert sorted(p.name for p in (out / "experiments").iterdir()) == ["clipping.md"]


def test_default_output_is_a_new_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["experiments", "clipping", "--quick"]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("experiments-") and (folder / QUICK_REPORT).exists()
    assert capsys.readouterr().out.strip() == f"wrote {Path('runs') / folder.name / QUICK_REPORT}"


def test_unknown_name_is_one_line_error(tmp_path, capsys):
    assert main(["experiments", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nope" in err
    assert list(tmp_path.iterdir()) == []
