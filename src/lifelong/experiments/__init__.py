"""Experiments at scale: run directories with checkpoints and resume, config grids, sweeps."""

from lifelong.experiments.runner import RunDirectoryConflict, finished_result, run_in_directory

__all__ = ["RunDirectoryConflict", "finished_result", "run_in_directory"]
