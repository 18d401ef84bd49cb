"""CPU per request of lockd's service layer alone, without HTTP: LockService on
``memory://`` with the decision log as its observer (writing to memory), 16 tasks cycling
a grant and a release each in a group of their own, then 16 tasks re-locking one held
group. The part of a request issue #15's stop 11 worked on; aiohttp's share is the
difference to bench/cpu_per_request.sh. Runs the lockd package of TREE:

    taskset -c 0 .venv/bin/python bench/service_cpu.py TREE [ROUNDS]
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time


def main() -> None:
    tree = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
    sys.path.insert(0, tree)  # that tree's lockd, not this one's
    from lockd.backends.memory import MemoryBackend
    from lockd.decisionlog import decisions, log_decision
    from lockd.groups import GroupSettings
    from lockd.layouts import NativeLayout
    from lockd.service import LockService
    from lockd.store import Store

    decisions.setLevel(logging.INFO)
    out = sys.stdout
    sys.stderr = io.StringIO()  # the decision lines, kept from the terminal

    async def run() -> None:
        service = LockService(Store(MemoryBackend(), NativeLayout()),
                              GroupSettings(default_slots=1))
        service.observers.append(log_decision)

        async def cycler(i: int) -> None:
            group, node = f"p-cycle{i}", f"cycler{i}"
            for _ in range(rounds):
                await service.pre_reboot(group, node)
                await service.steady_state(group, node)
                sys.stderr.seek(0)
                sys.stderr.truncate()

        async def relocker() -> None:
            for _ in range(rounds * 2):
                await service.pre_reboot("p-relock", "holder")

        await service.pre_reboot("p-relock", "holder")
        for mode, work in (("cycle", cycler), ("relock", lambda _: relocker())):
            started = time.process_time()
            await asyncio.gather(*(work(i) for i in range(16)))
            us = (time.process_time() - started) / (16 * rounds * 2) * 1e6
            print(f"{tree} {mode} cpu_us_per_req={us:.1f}", file=out)

    asyncio.run(run())


if __name__ == "__main__":
    main()
