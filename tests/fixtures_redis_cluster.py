"""A session Redis Cluster (three masters, one replica each) and ``redis_cluster_url``.

Started once per session (about 3 s) and shared: each test gets its own key prefix, so
tests never see each other's groups. A test that kills nodes starts its own cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.servers import RedisClusterServer


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    cluster = RedisClusterServer(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServer, unique: str) -> str:
    return f"{redis_cluster.url}?prefix=test-{unique}:"
