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


def test_mid_run_commands_run_at_their_moment_and_a_failed_one_fails_the_storm(
        tmp_path: Path) -> None:
    marker, never = tmp_path / "marker", tmp_path / "never"
    run, out, report = storm(
        tmp_path, ["--default-slots", "1"], "--nodes", "20", "--groups", "2", "--slots", "1",
        "--at", "0.3", "--run", f'echo "$STORM_URLS" > {marker}',
        "--at", "0.1", "--run", "echo broken; exit 3",
        "--at", "9999", "--run", f"touch {never}")
    # The storm itself was fine; the failed command makes the run fail all the same.
    assert run.returncode == 5, report
    result = json.loads((out / "result.json").read_text())
    assert result["safety"]["verdict"] == "SAFE" and result["all_rebooted"], report
    hooks = result["hooks"]
    assert [h["at_s"] for h in hooks] == [0.1, 0.3, 9999.0], report  # in moment order
    broken, echo, late = hooks
    assert broken["ran"] and broken["rc"] == 3 and broken["started_s"] >= 0.1, report
    assert Path(broken["log"]).read_text() == "broken\n"
    assert echo["ran"] and echo["rc"] == 0 and echo["started_s"] >= 0.3, report
    assert marker.read_text().strip().startswith("http://127.0.0.1:"), report
    assert not late["ran"] and not never.exists(), report
    assert "not run (the storm ended first)" in run.stdout, report


def test_mid_run_commands_come_in_pairs(tmp_path: Path) -> None:
    run = subprocess.run(
        [bench_python(), "-m", "bench.storm.run", "--url", "http://127.0.0.1:9/",
         "--at", "1", "--run", "true", "--at", "2", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--at given 2 times but --run 1 times" in run.stderr, (
        run.stderr)


def test_a_storm_on_redis_cluster_survives_a_master_killed_mid_way(tmp_path: Path) -> None:
    # Three lockd replicas on one cluster; a master is SIGKILLed while nodes are waiting and
    # its replica takes over. No group may ever have more holders than slots.
    out = tmp_path / "storm"
    run = subprocess.run(
        [bench_python(), "-m", "bench.storm.failover", "--kill-at", "2",
         "--lockd", f"{REPO / '.venv' / 'bin' / 'lockd'} serve", "--replicas", "3",
         "--nodes", "150", "--groups", "6", "--slots", "2", "--period", "300",
         "--reboot", "60", "--time-scale", "1/100", "--max-time", "60", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    report = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.returncode == 0, report
    assert "failed over" in run.stdout and "NOT failed over" not in run.stdout, report
    result = json.loads((out / "result.json").read_text())
    assert result["safety"]["verdict"] == "SAFE", report
    assert result["safety"]["with_uncertain"]["verdict"] == "SAFE", report
    assert result["all_rebooted"], report
    [kill] = result["hooks"]
    assert kill["ran"] and kill["rc"] == 0 and kill["cmd"].startswith("kill -9 "), report
    # The kill landed while the storm was still running: nodes were still to reboot.
    assert kill["started_s"] < result["wall_s"], report
