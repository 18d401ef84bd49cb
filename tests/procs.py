"""Transitional: the process helpers moved to bench/procs.py (shared with the benchmarks)."""

from bench.procs import (  # noqa: F401
    REPO,
    Lockd,
    Proc,
    find_binary,
    free_port,
    start_lockd,
    wait_for_port,
)

require_binary = find_binary
