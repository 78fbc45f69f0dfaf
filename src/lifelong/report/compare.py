"""``lifelong compare``: the comparison tables of the runs below some directories, as text."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from lifelong.report.aggregate import Table, aggregate
from lifelong.report.formats import FORMATS
from lifelong.report.runs import LoadedRuns, ReportInputError, load_runs


def load_tables(
    dirs: Iterable[str | Path], warn: Callable[[str], None] | None = None
) -> tuple[list[Table], LoadedRuns]:
    """Load the runs below ``dirs`` and group them; raises `ReportInputError` when none is usable."""
    dirs = list(dirs)
    loaded = load_runs(dirs, warn=warn)
    if not loaded.runs:
        where = ", ".join(str(d) for d in dirs) or "(no directories given)"
        found = f"; skipped {len(loaded.skipped)} unusable result files" if loaded.skipped else ""
        raise ReportInputError(f"no finished run (result.json) found under {where}{found}")
    return aggregate(loaded.runs), loaded


def compare(dirs: Iterable[str | Path], fmt: str = "text",
            warn: Callable[[str], None] | None = None) -> str:
    """The comparison tables of every finished run below ``dirs`` in format ``fmt``.

    ``fmt`` is one of ``text``, ``markdown``, ``csv`` or ``json``. Skipped result files are
    reported through ``warn`` (default: stderr) and counted in the output (except in csv).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    tables, loaded = load_tables(dirs, warn=warn)
    return FORMATS[fmt](tables, loaded.skipped)
