"""Two replicas on one store, configured with different slots (a rolling change): neither
rewrites the other's configuration, and the one that disagrees says so in its log, its
metrics, `lockd status` and its status page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.procs import Lockd
from tests.browser import chromium
from tests.httpcall import call, lock
from tests.test_status_page import section


def test_a_disagreeing_replica_shows_it_everywhere(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path / 'shared.db'}"
    first = Lockd(tmp_path, "--backend", db, "--group", "workers=3", name="first").start()
    second = None
    try:
        assert lock(first.url, "pre-reboot", "a", "workers")[0] == 200  # created with 3
        second = Lockd(tmp_path, "--backend", db, "--group", "workers=2", name="second").start()
        # second applied its 2 at start-up; first keeps deciding on the store's 2 slots.
        assert lock(second.url, "pre-reboot", "b", "workers")[0] == 200
        for node in ("c", "d"):
            assert lock(first.url, "pre-reboot", node, "workers")[0] == 423
        first.wait_for_output("another replica's configuration")
        _, doc = call(first.admin_url, "GET", "/api/v1/groups/workers")
        assert doc["slots"] == 2
        assert doc["policy"]["config_mismatch"] == {"configured_here": 3, "in_store": 2}
        _, doc = call(second.admin_url, "GET", "/api/v1/groups/workers")
        assert doc["policy"]["config_mismatch"] is None
        _, metrics = call(first.admin_url, "GET", "/metrics")
        assert 'lockd_config_mismatch{group="workers"} 1.0' in metrics
        status = subprocess.run(
            [sys.executable, "-m", "lockd", "status", "workers", "--server", first.admin_url],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        assert "Config: 3 slots here, 2 in the store" in status
        page = section(chromium(tmp_path, first.admin_url + "/", "--dump-dom"), "workers")
        assert "configuration disagrees: 3 slots configured here" in page
    finally:
        if second is not None:
            second.stop()
        first.stop()
