"""How many CPU cores this process may use: a module of its own so that light commands
(``python -m distill.materialize``) can ask without importing Lightning (`distill.runtime`
does, at 3 s per command)."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
