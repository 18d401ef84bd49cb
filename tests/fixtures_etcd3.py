"""``etcd://`` URLs for the contract suite: both v3 layouts on the session etcd server.

Every test gets its own key namespace, so tests share one etcd process without seeing each
other's groups.
"""

from __future__ import annotations

import pytest

from bench.servers import EtcdServer


@pytest.fixture
def etcd_native_url(etcd_server: EtcdServer, unique: str) -> str:
    return f"etcd://{etcd_server.endpoint}?namespace=t-{unique}/"


@pytest.fixture
def etcd_airlock_url(etcd_server: EtcdServer, unique: str) -> str:
    return f"etcd://{etcd_server.endpoint}?layout=airlock&namespace=t-{unique}/"
