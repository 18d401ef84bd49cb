"""Memory the decision log takes to remember waiting nodes: ``REMEMBER`` of them, each with
zincati's 32-character id, refused once (measured with tracemalloc).

    .venv/bin/python -m bench.decisionlog_memory
"""

from __future__ import annotations

import io
import logging
import sys
import tracemalloc

from lockd.decisionlog import REMEMBER, DecisionLog, decisions
from lockd.semaphore import Outcome
from lockd.service import Decision


def main() -> None:
    decisions.setLevel(logging.INFO)
    log = DecisionLog()
    out, sys.stderr = sys.stderr, io.StringIO()  # the first-refusal lines are not the point
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(REMEMBER):
        log(Decision("pre-reboot", "workers", f"{i:032x}", Outcome.FULL, None, 1, 0.001))
        log._buffer.clear()
    after = tracemalloc.take_snapshot()
    sys.stderr = out
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"{len(log._seen)} nodes remembered: {total / 2**20:.1f} MiB, "
          f"{total / len(log._seen):.0f} bytes each")


if __name__ == "__main__":
    main()
