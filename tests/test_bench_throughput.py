"""bench/throughput.py's pieces for ``--workers N``: the bare handler as N processes on one
port, the CPU recorded beside each measurement (the server's processes and wrk's own), the
summary that puts lockd's N/1 beside the bare handler's, and ``--wrk-threads``' guard.

The real runs are one second of wrk each, against the bare handler and lockd on sqlite.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from bench import throughput
from bench.procs import find_binary


def _listening_sockets(port: int) -> int:
    """Sockets in LISTEN (state 0A) on 127.0.0.1:port, from /proc/net/tcp."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as fh:
        return sum(1 for line in fh.readlines()[1:]
                   if line.split()[1] == local and line.split()[3] == "0A")


def _args(**kw: object) -> argparse.Namespace:
    base = {"duration": 1.0, "connections": 8, "wrk_threads": None, "load_cpus": None}
    return argparse.Namespace(**{**base, **kw})


def test_bare_in_two_processes_shares_one_port_and_both_answer_under_wrk(
        tmp_path: Path) -> None:
    find_binary("wrk", "wrk")
    bare = throughput.Bare(tmp_path, None, processes=2)
    try:
        url = bare.start()
        assert bare.name == "bare-w2" and len(set(bare.pids)) == 2
        assert _listening_sockets(int(url.rsplit(":", 1)[1])) == 2
        each = [throughput.cpu_seconds([pid]) for pid in bare.pids]
        s, cpu = throughput.measure_cpu(_args(wrk_threads=2), url, "refuse", "t-",
                                        {"server": bare.pids})
        # The kernel spread the 8 connections over both processes: each one worked.
        assert all(throughput.cpu_seconds([pid]) > before
                   for pid, before in zip(bare.pids, each, strict=True))
        assert s.requests > 0 and s.non2xx == 0 and s.errors == 0
        assert throughput.expected_ok("refuse", bare.name, s)
        # wrk's own CPU (RUSAGE_CHILDREN) and the server's, per request and in cores.
        assert s.load_cpu_s is not None and s.load_cpu_s > 0 and cpu["load_cores"] > 0
        assert cpu["server_us_per_request"] > 0 and cpu["server_cores"] > 0
        assert cpu["load_us_per_request"] == pytest.approx(1e6 * s.load_cpu_s / s.requests)
    finally:
        bare.stop()
    assert _listening_sockets(int(url.rsplit(":", 1)[1])) == 0


def test_lockd_workers_cpu_counts_the_supervisors_children_as_the_server(
        tmp_path: Path) -> None:
    find_binary("wrk", "wrk")
    target = throughput.LockdTarget("sqlite", tmp_path, None, workers=2)
    url = target.start()
    try:
        groups = throughput.lockd_groups(target)
        supervisor = target.lockd.proc.pid
        assert groups["supervisor"] == [supervisor] and len(groups["server"]) == 2
        for pid in groups["server"]:
            with open(f"/proc/{pid}/stat") as fh:
                assert int(fh.read().rpartition(")")[2].split()[1]) == supervisor  # ppid
        throughput._prepare(url, "t-", target.name)
        s, cpu = throughput.measure_cpu(_args(), url, "refuse", "t-", groups)
        assert s.requests > 0 and s.non2xx == s.requests  # every waiter refused, 423
        assert {"server_cores", "supervisor_cores", "load_cores"} <= cpu.keys()
        assert cpu["server_us_per_request"] > 0
    finally:
        target.stop()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in [supervisor, *groups["server"]])


def test_summary_puts_each_backends_bare_ratio_beside_lockds_from_the_same_runs() -> None:
    res = throughput.Results()
    res.worker_ratios = {"sqlite-w2": {"refuse": [1.2, 1.5, 1.3]},
                         "redis-w2": {"refuse": [1.1, 1.4, 1.2]}}
    res.bare_worker_ratios = {"sqlite": {"refuse": [1.6, 1.4, 1.5]},
                              "redis": {"refuse": [1.7, 1.3, 1.45]}}
    assert throughput.worker_summary(res, 2) == [
        "sqlite-w2 refuse: 1.30x one worker (median of 1.20, 1.50, 1.30); "
        "bare-w2: 1.50x one bare process (median of 1.60, 1.40, 1.50)",
        "redis-w2 refuse: 1.20x one worker (median of 1.10, 1.40, 1.20); "
        "bare-w2: 1.45x one bare process (median of 1.70, 1.30, 1.45)",
    ]


@pytest.mark.parametrize(("argv", "message"), [
    (["--wrk-threads", "4", "--connections", "16"], "cannot measure cycle"),
    (["--wrk-threads", "4", "--scenarios", "refuse,cycle"], "cannot measure cycle"),
    (["--wrk-threads", "17", "--scenarios", "refuse"], "must be 1..16"),
    (["--wrk-threads", "0", "--scenarios", "refuse"], "must be 1..16"),
])
def test_fewer_wrk_threads_than_connections_are_refused_for_cycle(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        throughput.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
