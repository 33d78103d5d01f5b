"""Peak resident memory of this process, per stage (Linux: VmHWM, reset through clear_refs;
elsewhere the process-lifetime peak from getrusage)."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start a new peak-RSS window; False where the system cannot (the peak is then cumulative)."""
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size (MiB) since the last :func:`reset_peak` (or process start)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def children_peak_rss_mb() -> float:
    """Largest peak RSS (MiB) of any finished child process (block workers) so far; 0 without
    children. Cumulative over this process's life: it is not reset per stage."""
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def release_free_memory() -> None:
    """Give memory freed by a stage back to the system (glibc ``malloc_trim``; no-op elsewhere),
    so the next stage's peak does not start from the previous stage's high-water mark."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: glibc's mallopt parameter number of M_ARENA_MAX
_M_ARENA_MAX = -8


def limit_malloc_arenas(n: int = 2) -> bool:
    """Let at most ``n`` glibc malloc arenas serve this process's threads (ONNX Runtime, codec
    and I/O thread pools each get one otherwise, and their freed memory stays scattered over
    them); a ``MALLOC_ARENA_MAX`` set in the environment wins. True when the limit was set."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, int(n)))
    except (OSError, AttributeError):
        return False
