"""lockd replicas as subprocesses over real HTTP, for the multi-replica tests of a store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.procs import Lockd
from tests.history import HEADERS


def replica(tmp: Path, url: str, slots: dict[str, int], name: str) -> Lockd:
    """A (not yet started) lockd on ``url`` with ``slots`` configured, no admin listener."""
    groups = [a for g, n in sorted(slots.items()) for a in ("--group", f"{g}={n}")]
    return Lockd(tmp, "--backend", url, "--no-admin", *groups, name=name)


@pytest.fixture
def replicas(request: pytest.FixtureRequest) -> Iterator[list[Lockd]]:
    """A list the test appends its started replicas to; every one is stopped after it."""
    started: list[Lockd] = []
    request.addfinalizer(lambda: [p.stop() for p in started])
    yield started


async def post(session: aiohttp.ClientSession, base: str, op: str, group: str,
               id_: str) -> tuple[int, dict]:
    body = {"client_params": {"id": id_, "group": group}}
    async with session.post(f"{base.rstrip('/')}/v1/{op}", json=body, headers=HEADERS) as resp:
        return resp.status, await resp.json(content_type=None)
