"""Peak memory of this process during a run.

On Linux the kernel's high-water mark of resident memory (``VmHWM``) can be reset by writing ``5``
to ``/proc/self/clear_refs``, so the peak is measured per run rather than per process. Elsewhere
the process-lifetime peak (``ru_maxrss``) is reported. CUDA peaks are added when a GPU is in use.
"""

from __future__ import annotations

import resource
import sys

import torch

_PROC = "/proc/self"


def reset_peak() -> None:
    """Start a new peak measurement (best effort)."""
    try:
        with open(f"{_PROC}/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float:
    """Peak resident memory in MiB since the last `reset_peak` (plus the CUDA peak, if any)."""
    peak = _vm_hwm_kib()
    if peak is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = rss / 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB elsewhere
    mb = peak / 1024
    if torch.cuda.is_available():
        mb += torch.cuda.max_memory_allocated() / 2**20
    return round(mb, 1)


def _vm_hwm_kib() -> float | None:
    try:
        with open(f"{_PROC}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None
