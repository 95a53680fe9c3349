"""`rnnkit experiments --quick` regenerates the quick report: files, tables, finite numbers; it
writes to a run folder unless told, and never replaces a full report.  The report links the
`rnnkit view` pages it writes, and each page holds the trace of the network its section trained;
the committed report's links lead to committed pages."""
import base64
import json
import math
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnkit.cli import main
from rnnkit.experiments import EXPERIMENTS, QUICK_REPORT, REPORT, run_experiments
from rnnkit.experiments.common import PAGE_BUDGET
from rnnkit.train import tasks
from rnnkit.train.config import resolve
from rnnkit.view import encode

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGED = ("memory", "gradients", "clipping", "jordan")         # the sections a picture explains
LINK = re.compile(r"^- \[[^\]]+\]\(([^)#\s]+\.html)(#[^)]*)?\): (\S.*)$", re.M)


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


def page_links(report: Path) -> dict:
    """{section name: [(page path, fragment, sentence)]} of a report's page links."""
    sub = report.with_suffix("")
    out = {}
    for part in sorted(sub.glob("*.md")):
        out[part.stem] = [(report.parent / ref, frag or "", look)
                          for ref, frag, look in LINK.findall(part.read_text(encoding="utf-8"))]
    return out


def page_data(html: str) -> dict:
    m = re.search(r'<script id="rnnkit-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def link_problems(report: Path) -> list:
    """What is wrong with a report's pages: a section a picture explains without a link, a page
    written but not linked from the report, a link to a missing file, a file that is not a page,
    a page over the byte budget."""
    linked = {report.parent / ref for ref, _, _ in LINK.findall(report.read_text(encoding="utf-8"))}
    links = page_links(report)
    problems = [f"section {name} links no page" for name in PAGED if not links.get(name)]
    problems += [f"{path.name} is not linked from {report.name}"
                 for path in sorted(report.with_suffix("").glob("*.html")) if path not in linked]
    for path in sorted(linked):
        if not path.exists():
            problems.append(f"{path} is linked but missing")
            continue
        html = path.read_text(encoding="utf-8")
        if '<script id="rnnkit-data"' not in html or "rnnkitView" not in html:
            problems.append(f"{path.name} is not an rnnkit view page")
        elif path.stat().st_size > PAGE_BUDGET + 100_000:
            problems.append(f"{path.name} takes {path.stat().st_size} bytes")
    return problems


def test_quick_report_links_every_page_it_writes(quick):
    out, sections = quick
    report = out / QUICK_REPORT
    assert link_problems(report) == []
    links = page_links(report)
    for name, sec in sections.items():
        written = [p.file for p in sec.pages]
        assert [p for p, _, _ in links[name]] == written, name
        assert all(out / QUICK_REPORT.replace(".md", "") / f.name == f for f in written)
        assert all(sentence.endswith(".") and "link" in sentence for _, _, sentence in links[name])
        assert all(p.size < 1_000_000 for p in sec.pages)


def test_a_missing_page_or_link_is_caught(quick, tmp_path):
    """The check above fails when a page is deleted or its link dropped."""
    out, _ = quick
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    report = copy / QUICK_REPORT
    (copy / "experiments-quick" / "adding_lstm.html").unlink()
    assert any("adding_lstm.html is linked but missing" in p for p in link_problems(report))
    shutil.copy(out / "experiments-quick" / "adding_lstm.html", copy / "experiments-quick")
    part = copy / "experiments-quick" / "clipping.md"
    part.write_text(re.sub(r"^- \[.*clipping_start.*$", "", part.read_text(), flags=re.M))
    report.write_text(re.sub(r"^- \[.*clipping_start.*$", "", report.read_text(), flags=re.M))
    assert link_problems(report) == ["section clipping links no page",
                                     "clipping_start.html is not linked from experiments-quick.md"]


def _trace_blocks(data: dict) -> dict:
    """{(layer, direction, name): ((T, H) values as the page reads them, (H,) half steps)}."""
    m = data["model"]
    keys = [(l, d, n) for l in range(m["layers"]) for d in range(m["directions"]) for n in m["names"]]
    halves = [np.asarray(b["step"]) / 2 for b in data["trace"]["blocks"]]
    return dict(zip(keys, zip(encode.unpack(data["trace"], data["steps"]), halves)))


def test_each_page_holds_the_trace_of_its_network_on_its_input(quick):
    """Every block decodes to the layer's own trace of the section's network on the page's
    input, within half a quantisation step; the link opens a quantity the page has."""
    out, sections = quick
    for name, sec in sections.items():
        for shown in sec.pages:
            data = page_data(shown.file.read_text(encoding="utf-8"))
            x = shown.inputs[0]
            with torch.no_grad():
                trace = shown.net.rnn(x, return_trace=True)[-1]
            assert data["steps"] == x.shape[1], shown.label
            for (l, d, q), (values, half) in _trace_blocks(data).items():
                want = trace[l][d][q][0].numpy()
                assert np.all(np.abs(values - want) <= half + 1e-6), (shown.label, q)
            quantity = re.search(r"quantity=(\w+)", shown.ref).group(1)
            assert quantity in data["model"]["names"], shown.ref
            assert data["flow"] is not None and len(data["flow"]["norms"][0][0][0]) == x.shape[1]


def test_the_adding_pages_show_the_networks_the_table_reports(quick):
    """The LSTM and Elman pages' networks score the section's test MSE at the longest T on the
    task drawn again from the section's configuration, and answer what the sentence says."""
    out, sections = quick
    section = (out / "experiments-quick" / "memory.md").read_text()
    for shown in sections["memory"].pages:
        cell = shown.label.split(",")[0]
        row = re.search(rf"^\| equal hidden \| {cell} \| (\d+) \| \d+ \| 20 \| [^|]+ \| ([^|]+) \|$",
                        section, re.M)
        cfg = resolve({"task": "adding", "cell": cell, "hidden": int(row.group(1)), "seq_len": 20,
                       "n_samples": 400, "seed": 0})
        test = tasks.build(cfg).tests["test"]
        with torch.no_grad():
            mse = F.mse_loss(shown.net(test.x)[0].squeeze(-1), test.y).item()
        assert f"{mse:.4g}" == row.group(2).strip(), cell
        with torch.no_grad():
            answer = shown.net(shown.inputs[0])[0].item()
        assert f"the network answers {answer:.3f}" in shown.look


def test_committed_report_links_pages_that_exist():
    """docs/experiments.md links a page under docs/experiments/ from every section a picture
    explains, every linked page exists and is small, and every committed page is linked."""
    report = DOCS / REPORT
    assert link_problems(report) == []
    pages = [p for links in page_links(report).values() for p, _, _ in links]
    assert pages and all(p.parent == DOCS / "experiments" for p in pages)
    text = report.read_text(encoding="utf-8")
    for p in pages:
        assert f"](experiments/{p.name}" in text
        data = page_data(p.read_text(encoding="utf-8"))
        raw = zlib.decompress(base64.b64decode(data["trace"]["blob"]))
        assert len(raw) == sum(b["units"] for b in data["trace"]["blocks"]) * data["steps"]
        assert "full version" in data["note"]


def test_variants_text_is_the_standard_librarys_and_deterministic():
    from rnnkit.experiments.lstm_variants import stdlib_text
    a, b = stdlib_text(5000), stdlib_text(5000)
    assert a == b and len(a) == 5000 and a.isascii()
    assert '"""' in a or "import" in a                       # Python source, not something else


def test_every_variant_trains_with_its_option(quick):
    """Each row differs from the plain LSTM of the same seed: a variant whose option did not reach the
    network would train exactly the plain LSTM (same data, seed and batches) and differ by 0."""
    _, sections = quick
    rows = [r for r in sections["variants"].tables[0].splitlines()[2:]]
    diffs = {r.split("|")[1].strip(): float(r.split("|")[3]) for r in rows}
    assert set(diffs) == {"LSTM", "peephole", "layer norm", "zoneout 0.1", "recurrent dropout 0.25"}
    assert diffs.pop("LSTM") == 0
    assert all(d != 0 for d in diffs.values()), diffs
