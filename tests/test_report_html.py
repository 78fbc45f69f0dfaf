"""The HTML report: one self-contained file with the tables and figures, written atomically."""

from __future__ import annotations

import base64
import os
import re
import tempfile

import pytest
from test_report_records import write_record

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

from lifelong.report import ReportInputError, html, load_tables, write_report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs(tmp_path):
    """Three methods on split-digits (two seeds each), HAT-like capacity for one of them."""
    capacity = {"capacity": [{"fc1": 0.2, "fc2": 0.1}, {"fc1": 0.5, "fc2": 0.3},
                             {"fc1": 0.7, "fc2": 0.6}]}
    for seed in (0, 1):
        write_record(tmp_path / "runs" / f"ft{seed}", seed=seed, n_tasks=3, acc=0.5 + seed / 10)
        write_record(tmp_path / "runs" / f"joint{seed}", method="joint", seed=seed, n_tasks=3)
        write_record(tmp_path / "runs" / f"hat{seed}", method="hat", seed=seed, n_tasks=3,
                     extra=capacity)
    return tmp_path / "runs"


def images(document: str) -> list[tuple[str, bytes]]:
    """(alt text, decoded PNG) of every embedded image."""
    found = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', document)
    return [(alt, base64.b64decode(data)) for alt, data in found]


def test_report_is_self_contained_with_a_heatmap_per_method(runs, tmp_path):
    out = write_report([runs], tmp_path / "out" / "report.html", title="My <comparison>")
    document = out.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>")
    assert "<title>My &lt;comparison&gt;</title>" in document
    assert 'src="http' not in document and "<link" not in document and "<script" not in document
    assert "url(" not in document  # no external fonts or backgrounds in the CSS
    found = images(document)
    assert found and all(png.startswith(PNG_MAGIC) for _, png in found)
    heatmaps = [alt for alt, _ in found if alt.startswith("Accuracy matrix of")]
    assert heatmaps == ["Accuracy matrix of finetune", "Accuracy matrix of hat",
                        "Accuracy matrix of joint"]
    assert document.count('<figure class="stream">') == 1
    assert document.count('<figure class="bars">') == 1
    assert document.count('<figure class="capacity">') == 1  # only hat records capacity
    assert '<table class="comparison">' in document and "0.550 ± " in document
    assert "6 runs of 3 methods" in document


def test_capacity_section_is_absent_without_capacity(tmp_path):
    write_record(tmp_path / "a")
    tables, loaded = load_tables([tmp_path])
    document = html.render_report(tables, loaded.skipped)
    assert "Capacity used per layer" not in document and 'class="capacity"' not in document


def test_report_lists_skipped_runs(runs, tmp_path):
    (runs / "broken").mkdir()
    (runs / "broken" / "result.json").write_text("{")
    document = write_report([runs], tmp_path / "report.html").read_text()
    assert "Skipped 1 result file: 1 unreadable" in document
    assert "Skipped result files (1)" in document


def test_report_is_written_atomically(runs, tmp_path, monkeypatch):
    out = tmp_path / "report.html"
    out.write_text("old report")

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(html.plots, "accuracy_heatmap", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report([runs], out)
    assert out.read_text() == "old report"
    monkeypatch.undo()
    write_report([runs], out)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "runs"]  # no temp files left


def test_no_runs_is_a_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(ReportInputError, match="no finished run"):
        write_report([tmp_path], tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()

