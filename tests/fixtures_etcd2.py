"""``etcd2_url``: a fresh, empty etcd v2 namespace on the session's real etcd server.

locksmith's key paths are fixed, so each test gets its own ``root`` directory in the URL.
Tests that must share the real paths with a locksmith client (parity) use unique group names
instead, and no ``root``.
"""

from __future__ import annotations

import pytest

from bench.servers import EtcdServer


@pytest.fixture
def etcd2_url(etcd_server: EtcdServer, unique: str) -> str:
    return f"etcd2://{etcd_server.endpoint}?root=/lockd-test-{unique}"


@pytest.fixture
def etcd2_endpoint(etcd_server: EtcdServer) -> str:
    """host:port of the shared etcd, for tests that speak the v2 wire protocol themselves."""
    return etcd_server.endpoint
