"""The results store: run directories under a root, indexed by an embedded SQLite database.

    ROOT/index.sqlite                  which runs exist, with what config, status and metrics
    ROOT/runs/<name>-<key12>/          one directory per run (see `lifelong.experiments.runner`)

The run directories are the truth; the index is a cache of them that `rebuild` recreates at any
time. Runs are keyed by the hash of their full config, so the same config maps to the same
directory and a finished run is never run twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.experiments.run_config import RunConfig
from lifelong.experiments.runner import CONFIG, RESULT, read_json

INDEX = "index.sqlite"
RUNS = "runs"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    run_dir TEXT NOT NULL,
    benchmark TEXT, method TEXT, model TEXT, seed INTEGER, task_order TEXT,
    status TEXT NOT NULL,          -- pending | running | done | failed
    config TEXT NOT NULL,          -- the full config, JSON
    metrics TEXT,                  -- result metrics, JSON (done runs)
    error TEXT,                    -- last error (failed runs)
    attempts INTEGER DEFAULT 0,
    updated REAL
)
"""


@dataclass
class RunRecord:
    key: str
    run_dir: str
    benchmark: str
    method: str
    seed: int
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    error: str | None
    attempts: int


def run_dir_name(config: RunConfig, key: str) -> str:
    return f"{config.benchmark}-{config.method}-s{config.seed}-{key[:12]}"


class Store:
    """A results store rooted at a directory (a sweep's output directory)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / INDEX
        with closing(self._connect()) as db, db:
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def run_dir(self, config: RunConfig) -> Path:
        return self.root / RUNS / run_dir_name(config, config.key())

    def record(self, config: RunConfig, status: str, metrics: dict | None = None,
               error: str | None = None, attempt: bool = False) -> None:
        """Insert or update the row of ``config``'s run."""
        key = config.key()
        full = config.resolved()
        with closing(self._connect()) as db, db:
            db.execute(
                """INSERT INTO runs (key, run_dir, benchmark, method, model, seed, task_order,
                                     status, config, metrics, error, attempts, updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(key) DO UPDATE SET status=excluded.status,
                       metrics=COALESCE(excluded.metrics, metrics), error=excluded.error,
                       attempts=attempts + excluded.attempts, updated=excluded.updated""",
                (key, str(self.run_dir(config).relative_to(self.root)), config.benchmark,
                 config.method, config.model, config.seed, json.dumps(full["order"]), status,
                 json.dumps(full), None if metrics is None else json.dumps(metrics), error,
                 int(attempt), time.time()),
            )

    def runs(self, **where: Any) -> list[RunRecord]:
        """Rows of the index, filtered by column equality (e.g. ``method="finetune"``)."""
        columns = {"key", "benchmark", "method", "model", "seed", "status"}
        bad = set(where) - columns
        if bad:
            raise ValueError(f"cannot filter on {sorted(bad)}; allowed: {', '.join(sorted(columns))}")
        clause = " AND ".join(f"{column} = ?" for column in where) or "1"
        with closing(self._connect()) as db:
            rows = db.execute(
                f"SELECT key, run_dir, benchmark, method, seed, status, config, metrics, error, "
                f"attempts FROM runs WHERE {clause} ORDER BY benchmark, method, seed, run_dir",
                tuple(where.values()),
            ).fetchall()
        return [RunRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]),
                          json.loads(r[7]) if r[7] else None, r[8], r[9]) for r in rows]

    def rebuild(self) -> int:
        """Recreate the index from the run directories; returns the number of runs found."""
        found = list(scan_run_dirs(self.root / RUNS))
        with closing(self._connect()) as db, db:
            db.execute("DELETE FROM runs")
        for config, status, metrics in found:
            self.record(config, status, metrics)
        return len(found)


def scan_run_dirs(runs_dir: Path) -> Iterable[tuple[RunConfig, str, dict | None]]:
    """``(config, status, metrics)`` of every run directory below ``runs_dir``."""
    for config_file in sorted(runs_dir.glob(f"*/{CONFIG}")):
        stored = read_json(config_file)
        if not stored or "config" not in stored:
            continue
        config = config_from_dict(stored["config"])
        result = read_json(config_file.parent / RESULT)
        if result and result.get("complete"):
            yield config, "done", result["metrics"]
        else:
            yield config, "incomplete", None


def config_from_dict(full: dict[str, Any]) -> RunConfig:
    """A `RunConfig` from its resolved form (``config.json`` / ``result.json``)."""
    fields = {k: v for k, v in full.items() if k in RunConfig.__dataclass_fields__}
    return RunConfig(**fields)
