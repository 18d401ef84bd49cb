"""The ``redis_url`` fixture: a fresh key prefix on the session redis-server per test."""

from __future__ import annotations

import pytest

from bench.servers import RedisServer


@pytest.fixture
def redis_url(redis_server: RedisServer, unique: str) -> str:
    # A prefix per test keeps tests apart on one server without flushing it.
    return f"{redis_server.url}?prefix=test-{unique}:"
