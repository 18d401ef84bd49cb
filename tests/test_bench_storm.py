"""A tiny reboot storm (50 nodes, 5 groups, a 300 s period run as 1 s) against a real lockd.

locust lives in its own venv (``.venv-bench``, made by ``make test``/``make bench``) and runs
as a subprocess: this process never imports locust or gevent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import REPO, Lockd

BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"


def test_tiny_storm_is_safe_and_every_node_reboots(tmp_path: Path) -> None:
    if not BENCH_PYTHON.exists():
        pytest.fail(f"{BENCH_PYTHON} is missing: `make bench-venv` (or `make test`) creates it")
    lockd = Lockd(tmp_path, "--state-dir", str(tmp_path / "state"), "--default-slots", "1").start()
    out = tmp_path / "storm"
    try:
        run = subprocess.run(
            [str(BENCH_PYTHON), "-m", "bench.storm.run", "--url", lockd.url,
             "--nodes", "50", "--groups", "5", "--slots", "1", "--period", "300",
             "--reboot", "60", "--time-scale", "1/300", "--max-time", "40", "--out", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        lockd.stop()
    report = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\nlockd:\n{lockd.proc.output()}"
    assert run.returncode == 0, report
    result = json.loads((out / "result.json").read_text())
    assert result["nodes"] == 50 and result["groups"] == 5, report
    assert result["rebooted"] == 50 and result["all_rebooted"], report
    assert result["safety"]["verdict"] == "SAFE", report
    assert result["safety"]["violations"] == [], report
    # Ten nodes per single-slot group: the checker must have seen the slot in use.
    assert result["safety"]["max_holders"] == 1, report
    assert result["drain"]["complete_groups"] == 5, report
    # Fifty nodes wanting five slots: somebody was refused, with the protocol's kind.
    assert result["statuses"].get("423", 0) > 0, report
    assert set(result["kinds"]) <= {"failed_lock_semaphore_full"}, report
    assert (out / "timeline.png").stat().st_size > 0
    assert "SAFETY       SAFE" in run.stdout
    assert "locust" not in sys.modules and "gevent" not in sys.modules
