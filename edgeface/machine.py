"""What this machine offers a process: shared by the CLI's option checks and the runtime's thread pools."""

from __future__ import annotations

import os


def machine_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
