"""What the benchmark scripts record about the machine: its CPU, and how busy it was."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU seconds all processes have run, CPU seconds this process has run), from /proc."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
        machine = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, IndexError, ValueError):
        machine = float("nan")
    own = os.times()
    return machine, own.user + own.system
