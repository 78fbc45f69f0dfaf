"""``lifelong report``: one self-contained HTML file comparing the runs below some directories.

The file needs nothing else to be read: CSS is inline, figures are PNG images embedded as base64
``data:`` URIs, and there is no script. For each benchmark it shows the comparison table, the mean
accuracy matrix of each method (annotated heatmaps), each task's accuracy through the stream,
ACC and BWT with 95% confidence intervals and, for methods that record one, the capacity used per
layer (HAT).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import lifelong
from lifelong.io import atomic_write_text
from lifelong.report import plots
from lifelong.report.aggregate import Row, Table
from lifelong.report.compare import load_tables
from lifelong.report.formats import CI_NOTE, format_summary, skipped_note
from lifelong.report.runs import SkippedRun

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d2329; background: #fff; line-height: 1.45; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
header { border-bottom: 2px solid #2b6cb0; margin-bottom: 18px; padding-bottom: 10px; }
h1 { font-size: 1.6em; margin: 0 0 6px; }
h2 { font-size: 1.3em; margin: 34px 0 6px; padding-top: 8px; border-top: 1px solid #d8dee4; }
h3 { font-size: 1.05em; margin: 22px 0 8px; color: #2d3748; }
p.meta, p.note { color: #4a5568; margin: 2px 0; font-size: 0.92em; }
table.comparison { border-collapse: collapse; margin: 10px 0; font-size: 0.92em; }
table.comparison th, table.comparison td { padding: 5px 10px; border-bottom: 1px solid #e2e8f0;
       text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.comparison th { background: #edf2f7; border-bottom: 2px solid #a0aec0; }
table.comparison th:first-child, table.comparison td:first-child { text-align: left; }
table.comparison tr:nth-child(even) td { background: #f7fafc; }
table.comparison td.best { font-weight: 700; color: #22543d; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e2e8f0; }
figcaption { font-size: 0.85em; color: #4a5568; max-width: 600px; }
details { margin: 8px 0; font-size: 0.88em; color: #4a5568; }
code { font-size: 0.95em; }
"""


def write_report(dirs: Iterable[str | Path], out_path: str | Path, title: str | None = None) -> Path:
    """Write the HTML report of every finished run below ``dirs`` to ``out_path`` (atomically).

    Raises `lifelong.report.ReportInputError` when no usable run is found. Returns ``out_path``.
    """
    dirs = list(dirs)
    tables, loaded = load_tables(dirs)
    document = render_report(tables, loaded.skipped, dirs, title=title)
    return atomic_write_text(out_path, document)


def render_report(tables: Sequence[Table], skipped: Sequence[SkippedRun] = (),
                  dirs: Sequence[str | Path] = (), title: str | None = None,
                  generated: datetime | None = None) -> str:
    """The report as one HTML string (see the module docstring for what it holds)."""
    generated = generated or datetime.now().astimezone()
    benchmarks = ", ".join(dict.fromkeys(table.benchmark for table in tables))
    title = title or f"Continual-learning comparison: {benchmarks}"
    n_runs = sum(len(table.runs) for table in tables)
    methods = sorted({row.method for table in tables for row in table.rows})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body><main>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="meta">{n_runs} run{"s" if n_runs != 1 else ""} of {len(methods)} method'
        f'{"s" if len(methods) != 1 else ""} ({_e(", ".join(methods))}) on {len(tables)} benchmark '
        f'setting{"s" if len(tables) != 1 else ""} ({_e(benchmarks)}).</p>',
    ]
    if dirs:
        parts.append(f'<p class="meta">From {_e(", ".join(str(d) for d in dirs))}.</p>')
    if skipped:
        parts.append(f'<p class="meta">{_e(skipped_note(skipped).capitalize())}.</p>')
    parts.append(f'<p class="meta">Generated {generated:%Y-%m-%d %H:%M %Z} by lifelong '
                 f"{_e(lifelong.__version__)}. Cells: {_e(CI_NOTE)}.</p></header>")
    if len(tables) > 1:
        parts.append("<nav><p class=\"meta\">Benchmarks: " + " · ".join(
            f'<a href="#{_anchor(i)}">{_e(t.label)}</a>' for i, t in enumerate(tables)) + "</p></nav>")
    for index, table in enumerate(tables):
        parts.append(_benchmark_section(index, table))
    if skipped:
        items = "".join(f"<li><code>{_e(str(s.path))}</code>: {_e(s.reason)}</li>" for s in skipped)
        parts.append(f"<details><summary>Skipped result files ({len(skipped)})</summary>"
                     f"<ul>{items}</ul></details>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def comparison_table(table: Table) -> str:
    """The table as HTML; the best mean of each column is bold (when there are several rows)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in ["method", "n"] + [m.title for m in table.metrics])
    best: dict[str, float] = {}
    for metric in table.metrics:
        means = [row.cells[metric.key].mean for row in table.rows]
        means = [m for m in means if m is not None]
        if len(table.rows) > 1 and means:
            best[metric.key] = max(means) if metric.higher_is_better else min(means)
    lines = []
    for row in table.rows:
        cells = [f"<td>{_e(row.label)}</td>", f"<td>{row.n}</td>"]
        for metric in table.metrics:
            cell = row.cells[metric.key]
            marked = cell.mean is not None and cell.mean == best.get(metric.key)
            cells.append(f'<td{" class=best" if marked else ""}>'
                         f"{_e(format_summary(cell, metric.kind))}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="comparison"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(lines)}</tbody></table>")


def _benchmark_section(index: int, table: Table) -> str:
    first = table.runs[0]
    seeds = sorted({str(run.seed) for run in table.runs}, key=lambda s: (len(s), s))
    orders = any(row.orders_vary() for row in table.rows)
    parts = [
        f'<section id="{_anchor(index)}"><h2>{_e(table.label)}</h2>',
        f'<p class="meta">Scenario: {_e(str(first.record.get("scenario", "?")))}-incremental · '
        f"{first.n_tasks} tasks ({_e(_shorten(first.task_names))}) · {len(table.runs)} runs · "
        f"seeds {_e(', '.join(seeds))}{' · several task orders' if orders else ''}</p>",
        comparison_table(table),
        "<h3>Accuracy matrices (mean over runs)</h3>",
        '<p class="note">Row i, column j: accuracy on task j after training task i. Grey cells above '
        "the diagonal: tasks not trained yet (the accuracies behind FWT).</p>",
        '<div class="grid">',
    ]
    for row in table.rows:
        png = plots.accuracy_heatmap(row.mean_accuracy_matrix(), row.task_labels(),
                                     f"{row.label} (n={row.n})")
        parts.append(_figure(png, f"Accuracy matrix of {row.label}", "heatmap"))
    parts.append("</div>")
    panels = [(row.label, row.mean_accuracy_matrix(), row.task_labels()) for row in table.rows]
    parts += [
        "<h3>Each task's accuracy through the stream</h3>",
        _figure(plots.accuracy_through_stream(panels), "Accuracy of each task after each training "
                "task, one panel per method", "stream",
                "Line j: accuracy on task j after training task i, for i ≥ j; a falling line is "
                "forgetting."),
        "<h3>ACC and BWT</h3>",
        _figure(plots.acc_bwt_bars([r.label for r in table.rows],
                                   [r.cells["acc"] for r in table.rows],
                                   [r.cells["bwt"] for r in table.rows]),
                "ACC and BWT per method with 95% confidence intervals", "bars",
                "ACC: mean accuracy over all tasks after the last one. BWT: mean change of each "
                "task's accuracy from just after learning it to the end (negative: forgetting)."),
    ]
    capacity = [(row.label, curves) for row in table.rows if (curves := row.mean_capacity())]
    if capacity:
        parts += [
            "<h3>Capacity used per layer (HAT)</h3>",
            _figure(plots.capacity_curves(capacity), "Fraction of each layer in use after each task",
                    "capacity", "Fraction of each layer's units reserved by the tasks learned so "
                    "far (mean over runs)."),
        ]
    parts.append(_runs_list(table.rows))
    parts.append("</section>")
    return "\n".join(parts)


def _figure(png: bytes, alt: str, kind: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    text = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return (f'<figure class="{kind}"><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f"{text}</figure>")


def _runs_list(rows: Sequence[Row]) -> str:
    items = "".join(
        f"<li>{_e(row.label)}: " + ", ".join(f"<code>{_e(str(run.path.parent))}</code>" for run in row.runs)
        + "</li>" for row in rows)
    return f"<details><summary>Run directories</summary><ul>{items}</ul></details>"


def _shorten(names: Sequence[str], keep: int = 8) -> str:
    """``a, b, c, ..., z`` for long lists of names."""
    if len(names) <= keep:
        return ", ".join(names)
    return ", ".join([*names[: keep - 2], "…", names[-1]])


def _anchor(index: int) -> str:
    return f"benchmark-{index + 1}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
