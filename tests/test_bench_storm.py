"""Tiny reboot storms (a 300 s period run as 1 s) against a real lockd, and the report alone.

locust lives in its own venv (``.venv-bench``, made by ``make test``/``make bench``) and runs
as a subprocess: this process never imports locust or gevent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.procs import REPO, Lockd

BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"


def bench_python() -> str:
    if not BENCH_PYTHON.exists():
        pytest.fail(f"{BENCH_PYTHON} is missing: `make bench-venv` (or `make test`) creates it")
    return str(BENCH_PYTHON)


def storm(tmp_path: Path, lockd_args: list[str], *storm_args: str,
          ) -> tuple[subprocess.CompletedProcess, Path, str]:
    """Run bench.storm.run against a lockd started with ``lockd_args``."""
    python = bench_python()
    lockd = Lockd(tmp_path, "--state-dir", str(tmp_path / "state"), *lockd_args).start()
    out = tmp_path / "storm"
    try:
        run = subprocess.run(
            [python, "-m", "bench.storm.run", "--url", lockd.url, "--period", "300",
             "--reboot", "60", "--time-scale", "1/300", "--max-time", "40", "--out", str(out),
             *storm_args],
            cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        lockd.stop()
    report = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\nlockd:\n{lockd.proc.output()}"
    return run, out, report


def test_tiny_storm_is_safe_and_every_node_reboots(tmp_path: Path) -> None:
    run, out, report = storm(tmp_path, ["--default-slots", "1"],
                             "--nodes", "50", "--groups", "5", "--slots", "1")
    assert run.returncode == 0, report
    result = json.loads((out / "result.json").read_text())
    assert result["nodes"] == 50 and result["groups"] == 5, report
    assert result["rebooted"] == 50 and result["all_rebooted"], report
    assert result["safety"]["verdict"] == "SAFE", report
    assert result["safety"]["violations"] == [], report
    # Ten nodes per single-slot group: the checker must have seen the slot in use.
    assert result["safety"]["max_holders"] == 1, report
    assert result["drain"]["complete_groups"] == 5, report
    # Judged against the simulated perfect server as well as against ceil(n/slots) x reboot.
    assert result["drain"]["polling_ratio_median"] is not None, report
    assert all(g["polling_ideal_s"] for g in result["drain"]["groups"].values()), report
    assert result["safety"]["with_uncertain"]["verdict"] == "SAFE", report
    assert result["refused"] == {}, report
    # Fifty nodes wanting five slots: somebody was refused, with the protocol's kind.
    assert result["statuses"].get("423", 0) > 0, report
    assert set(result["kinds"]) <= {"failed_lock_semaphore_full"}, report
    assert (out / "timeline.png").stat().st_size > 0
    assert "SAFETY       SAFE" in run.stdout
    assert "locust" not in sys.modules and "gevent" not in sys.modules


def test_named_groups_are_the_ones_the_nodes_use(tmp_path: Path) -> None:
    # A server that serves only its configured groups (airlock does) takes the storm when
    # the storm is told their names.
    run, out, report = storm(tmp_path, ["--strict-groups", "--group", "web=1", "--group",
                                        "db=1"],
                             "--nodes", "20", "--group-names", "web,db", "--slots", "1")
    assert run.returncode == 0, report
    result = json.loads((out / "result.json").read_text())
    assert result["storm_groups"] == ["web", "db"], report
    assert sorted(result["drain"]["groups"]) == ["db", "web"], report
    assert result["rebooted"] == 20 and result["safety"]["verdict"] == "SAFE", report
    assert "404" not in result["statuses"], report


def test_a_server_that_refuses_the_groups_stops_the_storm_with_what_to_configure(
        tmp_path: Path) -> None:
    run, out, report = storm(tmp_path, ["--strict-groups", "--group", "ok-0=1"],
                             "--nodes", "30", "--group-prefix", "ok-", "--groups", "3",
                             "--slots", "1", "--refused-after", "5")
    assert run.returncode == 4, report
    result = json.loads((out / "result.json").read_text())
    assert sorted(result["refused"]) == ["ok-1", "ok-2"], report
    assert {v["kind"] for v in result["refused"].values()} == {"unknown_group"}, report
    assert not result["all_rebooted"], report
    assert "REFUSED" in run.stdout and "--group-names ok-0,ok-1,ok-2" in run.stdout, report
    # The fragment to paste into the server's config names every group of the storm.
    toml = (out / "groups.toml").read_text()
    assert all(f'name = "ok-{i}"' in toml for i in range(3)) and "slots = 1" in toml
    assert (out / "timeline.png").stat().st_size > 0


def test_the_report_of_an_empty_record_says_so_and_draws_an_empty_timeline(
        tmp_path: Path) -> None:
    python = bench_python()
    (tmp_path / "record-1.jsonl").write_text(
        json.dumps({"nodes": {"n1": "g"}, "statuses": {"error": 3}, "kinds": {}}) + "\n"
        + json.dumps([1.0, "n1", "g", "unsure"]) + "\n")
    png = tmp_path / "timeline.png"
    run = subprocess.run(
        [python, "-m", "bench.storm.report", str(tmp_path), "--slots", "1", "--reboot", "1",
         "--png", str(png)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "NO DATA: no holds recorded" in run.stdout, run.stdout
    assert "Traceback" not in run.stderr, run.stderr
    assert png.stat().st_size > 0
