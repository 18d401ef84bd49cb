"""A storm of FleetLock clients over real HTTP that records what each one saw.

A client that got 200 for ``pre-reboot`` at time ``t1`` (response received) and later sent
``steady-state`` at time ``t2`` (request about to be sent) certainly held a slot over
``[t1, t2]``. The holds are checked by the same checker the benchmark storm uses
(:mod:`bench.storm.safety`), which has no false positives whatever the server is.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from bench.storm.safety import Hold, violations

__all__ = ["HEADERS", "Hold", "StormReport", "storm", "violations"]

HEADERS = {"fleet-lock-protocol": "true"}


@dataclass
class StormReport:
    holds: list[Hold] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    grants: int = 0


async def storm(
    urls: Sequence[str],
    slots: Mapping[str, int],
    *,
    clients: int,
    rounds: int,
    hold: tuple[float, float] = (0.0, 0.01),
    seed: int = 0,
    timeout: float = 30.0,
) -> StormReport:
    """``clients`` nodes each take a slot ``rounds`` times across random replicas.

    Each node picks a group, polls ``pre-reboot`` until it gets 200, holds for a random
    time, then sends ``steady-state`` until it gets 200, recording what it saw.
    """
    rng = random.Random(seed)
    report = StormReport()
    groups = sorted(slots)
    conn = aiohttp.TCPConnector(limit=0)
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def post(session: aiohttp.ClientSession, op: str, group: str, id_: str) -> int:
        url = rng.choice(urls).rstrip("/") + f"/v1/{op}"
        body = {"client_params": {"id": id_, "group": group}}
        try:
            async with session.post(url, json=body, headers=HEADERS) as resp:
                report.statuses[resp.status] += 1
                if resp.status != 200:
                    report.kinds[(await resp.json(content_type=None))["kind"]] += 1
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            report.statuses[0] += 1
            return 0

    async def node(session: aiohttp.ClientSession, n: int) -> None:
        for r in range(rounds):
            group, id_ = rng.choice(groups), f"node-{n}"
            while await post(session, "pre-reboot", group, id_) != 200:
                await asyncio.sleep(rng.uniform(0.001, 0.02))
            start = time.monotonic()
            report.grants += 1
            await asyncio.sleep(rng.uniform(*hold))
            end = time.monotonic()
            while await post(session, "steady-state", group, id_) != 200:
                await asyncio.sleep(rng.uniform(0.001, 0.02))
            report.holds.append(Hold(group, f"{id_}#{r}", start, end))

    async with aiohttp.ClientSession(connector=conn, timeout=client_timeout) as session:
        await asyncio.gather(*(node(session, n) for n in range(clients)))
    return report
