"""Experiments: one run from a config, run directories with checkpoints and resume, sweeps.

- `RunConfig` describes one run; `run_experiment` runs it in memory, `run_in_directory` in a
  checkpointed, resumable directory.
- `lifelong.experiments.config` expands a YAML grid into run configs; `sweep` runs them on an
  executor (`executors`: local process pool or Ray) into a `store` indexed by SQLite.
"""

from lifelong.experiments.run_config import (
    RunConfig,
    build_method,
    build_stream,
    run_experiment,
    write_result,
)
from lifelong.experiments.runner import RunDirectoryConflict, finished_result, run_in_directory

__all__ = ["RunConfig", "RunDirectoryConflict", "build_method", "build_stream", "finished_result",
           "run_experiment", "run_in_directory", "write_result"]
