"""Comparison tables, plots and the HTML report of finished runs.

    compare(dirs, fmt)             tables as text, markdown, csv or json  (``lifelong compare``)
    write_report(dirs, out_path)   one self-contained HTML file            (``lifelong report``)

Lower-level pieces: `load_runs` finds and checks ``result.json`` files, `aggregate` groups runs
into `Table` s of `Row` s with a `Summary` (mean, 95% CI half-width, n) per metric.
"""

from lifelong.report.aggregate import METRICS, Metric, Row, Table, aggregate
from lifelong.report.compare import compare, load_tables
from lifelong.report.formats import FORMATS
from lifelong.report.runs import LoadedRuns, ReportInputError, Run, SkippedRun, load_run, load_runs
from lifelong.report.stats import Summary, summarize, t_quantile_975


def __getattr__(name: str):
    """`write_report` and `render_report` are imported on first use: they load matplotlib."""
    if name in ("write_report", "render_report"):
        from lifelong.report import html

        return getattr(html, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMATS", "METRICS", "LoadedRuns", "Metric", "ReportInputError", "Row", "Run", "SkippedRun",
    "Summary", "Table", "aggregate", "compare", "load_run", "load_runs", "load_tables",
    "render_report", "summarize", "t_quantile_975", "write_report",
]
