"""How many CPUs this process may run on: the thread pools (reads, fills, hashing, compiles)
size themselves by it, not by the machine's count. A batch job (Slurm, taskset, a container's
cpuset) often gets a few cores of a large node, and a pool as wide as the node would
oversubscribe them."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs in this process's affinity mask where the OS tells it (Linux), else the
    machine's count; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)
