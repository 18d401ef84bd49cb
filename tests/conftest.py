"""Shared fixtures: backends by URL (the contract suite runs on each), lockd apps."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.procs import Lockd, MissingBinary, start_lockd
from lockd.store import Store, open_store

IN_CI = os.environ.get("CI", "").lower() == "true"

# Each name needs a fixture "<name>_url" returning a fresh, empty namespace on that store.
# The Redis and etcd fixtures live in their own modules, registered below.
BACKENDS = [
    "memory", "sqlite", "redis", "redis_cluster", "etcd2", "etcd_native", "etcd_airlock",
]

pytest_plugins = [
    "tests.servers",
    "tests.replicas",
    "tests.fixtures_redis",
    "tests.fixtures_redis_cluster",
    "tests.fixtures_etcd2",
    "tests.fixtures_etcd3",
]


def _missing(exc: MissingBinary) -> None:
    """A program a test needs is not installed: skip it locally, fail it under CI=true."""
    if IN_CI:
        pytest.fail(str(exc))
    pytest.skip(str(exc))  # only outside CI: under CI=true it failed just above


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    except MissingBinary as exc:
        _missing(exc)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    except MissingBinary as exc:
        _missing(exc)


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
async def store(backend_url: str) -> AsyncIterator[Store]:
    """Each backend with the layout its URL names, opened."""
    s = open_store(backend_url)
    await s.backend.open()
    try:
        yield s
    finally:
        await s.backend.close()


@pytest.fixture(params=["memory", "sqlite"])
def lockd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lockd]:
    """``lockd serve`` (group workers=2, JSON logs) on memory:// and on sqlite://."""
    server = start_lockd(tmp_path, request.param)
    try:
        yield server
    finally:
        server.stop()
