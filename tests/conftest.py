"""Shared fixtures: backends by URL (the contract suite runs on each), lockd apps."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from backends import Backend, open_backend
from tests.procs import Lockd, start_lockd

# Each name needs a fixture "<name>_url" returning a fresh, empty namespace on that store.
# The Redis and etcd fixtures live in their own modules, registered below.
BACKENDS = ["memory", "sqlite", "redis", "etcd2", "etcd_native", "etcd_airlock"]

pytest_plugins = [
    "tests.servers",
    "tests.fixtures_redis",
    "tests.fixtures_etcd2",
    "tests.fixtures_etcd3",
]


@pytest.fixture
def memory_url() -> str:
    return "memory://"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'lockd.db'}"


@pytest.fixture
def unique() -> str:
    """A fresh name, for key prefixes that keep tests apart on a shared server."""
    return uuid.uuid4().hex[:12]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(params=[b for b in BACKENDS if b != "memory"])
def shared_backend_url(request: pytest.FixtureRequest) -> str:
    """Stores that several processes can share (every one but memory://)."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
async def backend(backend_url: str) -> AsyncIterator[Backend]:
    b = open_backend(backend_url)
    await b.open()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture(params=["memory", "sqlite"])
def lockd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lockd]:
    """``lockd serve`` (group workers=2, JSON logs) on memory:// and on sqlite://."""
    server = start_lockd(tmp_path, request.param)
    try:
        yield server
    finally:
        server.stop()
