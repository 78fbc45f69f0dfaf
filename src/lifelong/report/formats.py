"""Comparison tables as text: aligned plain text, markdown, csv or json.

Every renderer takes the tables from `lifelong.report.aggregate.aggregate` and the result files
skipped while loading. Plain text and markdown show ``mean ± half-width`` (a value alone when a
row has one run); csv has one line per benchmark x method with ``<metric>_mean``,
``<metric>_ci95`` and ``<metric>_n`` columns; json holds the same numbers in nested objects.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

from lifelong.report.aggregate import METRICS, Metric, Table
from lifelong.report.runs import SkippedRun
from lifelong.report.stats import Summary

CI_NOTE = "mean ± 95% CI half-width (t(0.975, n-1) · sd / √n) over seeds and task orders; n = runs"


def format_number(value: float | None, kind: str) -> str:
    """One value at the precision its kind deserves (``n/a`` for None)."""
    if value is None:
        return "n/a"
    if kind == "accuracy":
        return f"{value:.3f}"
    if kind == "signed":
        return f"{value:+.3f}"
    if kind == "megabytes":
        return f"{value:.0f}"
    return f"{value:.{_seconds_decimals(value)}f}"


def format_summary(summary: Summary, kind: str) -> str:
    """``mean ± half-width``, or the mean alone when there is no interval (one run)."""
    text = format_number(summary.mean, kind)
    if summary.half_width is None or summary.mean is None:
        return text
    if kind == "seconds":  # the half-width with as many decimals as the mean
        width = f"{summary.half_width:.{_seconds_decimals(summary.mean)}f}"
    else:
        width = format_number(summary.half_width, "accuracy" if kind == "signed" else kind)
    return f"{text} ± {width}"


def skipped_note(skipped: Sequence[SkippedRun]) -> str:
    """``skipped 3 result files: 2 partial, 1 unreadable`` (empty when none were skipped)."""
    if not skipped:
        return ""
    kinds: dict[str, int] = {}
    for entry in skipped:
        kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
    parts = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    noun = "file" if len(skipped) == 1 else "files"
    return f"skipped {len(skipped)} result {noun}: {parts}"


def render_text(tables: Sequence[Table], skipped: Sequence[SkippedRun] = ()) -> str:
    """Aligned columns, one block per table, a note on the interval and on skipped files."""
    blocks = []
    for table in tables:
        header = ["method", "n"] + [m.title for m in table.metrics]
        lines = [[row.label, str(row.n)] + [format_summary(row.cells[m.key], m.kind) for m in table.metrics]
                 for row in table.rows]
        widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]

        def fmt(cells: list[str], widths: list[int] = widths) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

        blocks.append("\n".join([f"{table.label}: {_runs(len(table.runs))}", fmt(header)]
                                + [fmt(line) for line in lines]))
    return "\n\n".join(blocks + _notes(skipped)) + "\n"


def render_markdown(tables: Sequence[Table], skipped: Sequence[SkippedRun] = ()) -> str:
    """One ``###`` heading and one pipe table per benchmark."""
    blocks = []
    for table in tables:
        header = ["method", "n"] + [m.title for m in table.metrics]
        lines = [f"### {_md(table.label)} ({_runs(len(table.runs))})", "",
                 "| " + " | ".join(header) + " |",
                 "|" + "|".join([":---", "---:"] + ["---:"] * len(table.metrics)) + "|"]
        for row in table.rows:
            cells = [_md(row.label), str(row.n)]
            cells += [format_summary(row.cells[m.key], m.kind) for m in table.metrics]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks + [f"_{note}_" for note in _notes(skipped)]) + "\n"


def render_csv(tables: Sequence[Table], skipped: Sequence[SkippedRun] = ()) -> str:
    """One line per benchmark x method; full-precision numbers, empty where there is none.

    Skipped files are not listed here (they were reported on stderr while loading).
    """
    metrics = _union_metrics(tables)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["benchmark", "method", "n"]
                    + [f"{m.key}_{part}" for m in metrics for part in ("mean", "ci95", "n")])
    for table in tables:
        for row in table.rows:
            values: list[Any] = [table.label, row.label, row.n]
            for metric in metrics:
                cell = row.cells.get(metric.key, Summary(None, None, 0))
                values += [_plain(cell.mean), _plain(cell.half_width), cell.n]
            writer.writerow(values)
    return buffer.getvalue()


def render_json(tables: Sequence[Table], skipped: Sequence[SkippedRun] = ()) -> str:
    """Tables, rows and cells as nested objects, with the runs behind each row and the skipped files."""
    document = {
        "interval": CI_NOTE,
        "runs": sum(len(table.runs) for table in tables),
        "skipped": [{"path": str(e.path), "kind": e.kind, "reason": e.reason} for e in skipped],
        "tables": [
            {
                "benchmark": table.label,
                "benchmark_name": table.benchmark,
                "settings": table.settings,
                "metrics": {m.key: m.title for m in table.metrics},
                "rows": [
                    {
                        "method": row.label,
                        "method_name": row.method,
                        "settings": row.settings,
                        "n": row.n,
                        "metrics": {key: cell.to_dict() for key, cell in row.cells.items()},
                        "runs": [str(run.path) for run in row.runs],
                    }
                    for row in table.rows
                ],
            }
            for table in tables
        ],
    }
    return json.dumps(document, indent=2, default=str, ensure_ascii=False) + "\n"


#: Output formats of `lifelong.report.compare.compare`, by name.
FORMATS: dict[str, Callable[[Sequence[Table], Sequence[SkippedRun]], str]] = {
    "text": render_text,
    "markdown": render_markdown,
    "csv": render_csv,
    "json": render_json,
}


def _union_metrics(tables: Sequence[Table]) -> list[Metric]:
    keys = {m.key for table in tables for m in table.metrics}
    return [m for m in METRICS if m.key in keys]


def _notes(skipped: Sequence[SkippedRun]) -> list[str]:
    note = skipped_note(skipped)
    return [CI_NOTE] + ([note] if note else [])


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _plain(value: float | None) -> str:
    return "" if value is None else repr(value)


def _seconds_decimals(value: float) -> int:
    return 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
