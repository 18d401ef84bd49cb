"""``lockd serve --workers N`` (lockd/workers.py): real supervisors and workers on real ports.

Which worker answers is the kernel's choice (SO_REUSEPORT); the tests see it in
``lockd_worker_requests{pid=...}``, the one per-worker series, and in the pids the
supervisor prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.linearizability import HistoryRecorder, Kind, check
from bench.procs import Lockd
from lockd.metrics import VIEW_SYNC_S
from tests.history import storm, violations
from tests.httpcall import call, lock
from tests.replicas import post

SERVING = re.compile(r"lockd: serving \(pid (\d+)\) with (\d+) workers \(pids ([\d, ]+)\)")


def workers(tmp: Path, url: str, *args: str, n: str = "2", name: str = "sup",
            env: dict[str, str] | None = None) -> Lockd:
    return Lockd(tmp, "--backend", url, "--workers", n, *args, name=name, env=env)


def pids(server: Lockd) -> tuple[int, list[int]]:
    """The supervisor's pid and its workers' (as it printed them once all served)."""
    assert server.proc is not None
    m = SERVING.search(server.proc.output())
    assert m is not None, server.proc.output()
    return int(m[1]), [int(p) for p in m[3].split(", ")]


def samples(admin_url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    _, text = call(admin_url, "GET", "/metrics")
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is not alive
        return fh.read().rpartition(")")[2].split()[0] != "Z"


def wait_count(server: Lockd, text: str, n: int, timeout: float = 10.0) -> None:
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    while server.proc.output().count(text) < n:
        assert time.monotonic() < deadline, server.proc.output()
        time.sleep(0.05)


def fresh_posts(url: str, n: int, group: str = "other") -> None:
    """``n`` refusals-or-grants, each on a new connection (urllib does not keep them)."""
    for i in range(n):
        lock(url, "pre-reboot", f"fresh-{i}", group)


async def test_two_workers_on_one_sqlite_file_pass_the_storm(tmp_path: Path) -> None:
    slots = {"a": 1, "b": 2, "c": 3}
    flags = [f"--group={g}={n}" for g, n in slots.items()]
    server = workers(tmp_path, f"sqlite://{tmp_path / 'shared.db'}", *flags).start()
    supervisor, worker_pids = pids(server)
    try:
        report = await storm([server.url], slots, clients=60, rounds=3, hold=(0.0, 0.01),
                             seed=3)
        requests = samples(server.admin_url, "lockd_http_requests_total")
        per_worker = samples(server.admin_url, "lockd_worker_requests")
        # Each worker copies its view's counts into the shared files every VIEW_SYNC_S.
        await asyncio.sleep(VIEW_SYNC_S + 1)
        lookups = samples(server.admin_url, "lockd_view_lookups_total")
        feeds = samples(server.admin_url, "lockd_view_feed_connected")
    finally:
        code = server.stop()
    assert report.grants == 180 and len(report.holds) == 180
    # Every pre-reboot, whichever worker took it, was one lookup of that worker's view.
    pre_reboots = sum(v for k, v in requests.items() if dict(k)["endpoint"] == "pre-reboot")
    assert sum(lookups.values()) == pre_reboots > 0
    assert lookups[(("result", "hit"),)] > 0 and list(feeds.values()) == [1.0]
    assert violations(report.holds, slots) == []
    assert report.statuses[500] == 0 and report.statuses[0] == 0
    assert report.kinds["failed_lock_semaphore_full"] > 0  # they really contended
    sent = sum(report.statuses.values())
    # Counters are summed over the workers: exactly the requests the storm sent.
    assert sum(requests.values()) == sent
    # Both workers served: the kernel spread the storm's connections over them.
    by_pid = {int(dict(k)["pid"]): v for k, v in per_worker.items()}
    assert sorted(by_pid) == sorted(worker_pids) and supervisor not in by_pid
    assert all(v > 0 for v in by_pid.values()) and sum(by_pid.values()) == sent
    assert code == 0, "SIGTERM stops every worker and the supervisor exits 0"
    assert not any(alive(p) for p in worker_pids)


def test_a_killed_worker_is_restarted_and_serves(tmp_path: Path) -> None:
    server = workers(tmp_path, f"sqlite://{tmp_path / 'l.db'}").start()
    _, (first, second) = pids(server)
    try:
        os.kill(first, signal.SIGKILL)
        server.wait_for_output(f"worker 0 (pid {first}) was killed by SIGKILL")
        server.wait_for_output("worker 0 serving again (pid ")
        out = server.proc.output()  # type: ignore[union-attr]
        new = int(re.search(r"worker 0 serving again \(pid (\d+)\)", out)[1])  # type: ignore[index]
        assert new not in (first, second) and alive(new) and alive(second)
        fresh_posts(server.url, 40)
        by_pid = {int(dict(k)["pid"]): v
                  for k, v in samples(server.admin_url, "lockd_worker_requests").items()}
        assert first not in by_pid, "a dead worker's per-worker series is dropped"
        assert by_pid.get(new, 0) > 0, by_pid
        # The dead worker's counts stay in the sums.
        assert sum(samples(server.admin_url, "lockd_http_requests_total").values()) == 40
    finally:
        assert server.stop() == 0


async def test_two_workers_give_a_linearizable_history(tmp_path: Path) -> None:
    """Every request recorded (bench/linearizability.py) on a new connection each, so the
    kernel spreads them over both workers; the history must be linearizable."""
    slots = {"one": 1, "two": 2}
    server = workers(tmp_path, f"sqlite://{tmp_path / 'l.db'}", "--group=one=1",
                     "--group=two=2").start()
    rec = HistoryRecorder()
    rng = random.Random(11)
    try:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def call(op: str, kind: Kind, group: str, node: str) -> int | None:
                with rec.recording(kind, group, node, process=node) as out:
                    out.status = (await post(session, server.url, op, group, node))[0]
                return out.status

            async def node(i: int) -> None:
                for _ in range(3):
                    group = rng.choice(sorted(slots))
                    while await call("pre-reboot", "lock", group, f"n{i}") != 200:
                        await asyncio.sleep(rng.uniform(0.001, 0.01))
                    await asyncio.sleep(rng.uniform(0.0, 0.005))
                    while await call("steady-state", "unlock", group, f"n{i}") != 200:
                        await asyncio.sleep(rng.uniform(0.001, 0.01))

            await asyncio.gather(*(node(i) for i in range(20)))
        per_worker = samples(server.admin_url, "lockd_worker_requests")
    finally:
        assert server.stop() == 0
    history = rec.history()
    assert sum(o.result == "refused" for o in history) > 0  # they contended
    assert all(o.result != "unknown" for o in history)
    result = check(history, slots)
    assert result.ok, result
    assert len(per_worker) == 2 and all(v > 0 for v in per_worker.values())


def test_a_worker_that_keeps_dying_is_restarted_ever_more_slowly() -> None:
    from lockd.workers import backoff

    assert [backoff(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_sighup_reloads_every_worker(tmp_path: Path) -> None:
    config = tmp_path / "lockd.toml"
    config.write_text('[lock]\ngroups = [{ name = "g", slots = 1 }]\n')
    server = workers(tmp_path, f"sqlite://{tmp_path / 'l.db'}", "--config", str(config)).start()
    try:
        assert lock(server.url, "pre-reboot", "a", "g")[0] == 200
        assert lock(server.url, "pre-reboot", "b", "g")[0] == 423
        config.write_text('[lock]\ngroups = [{ name = "g", slots = 3 }]\n')
        server.proc.signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_count(server, "groups={'g': 3,", 2)
        for _ in range(20):  # fresh connections: both workers answer some
            _, doc = call(server.admin_url, "GET", "/api/v1/groups/g")
            assert doc["policy"]["configured_slots"] == 3 and doc["slots"] == 3
        assert lock(server.url, "pre-reboot", "b", "g")[0] == 200
        assert lock(server.url, "pre-reboot", "c", "g")[0] == 200
    finally:
        assert server.stop() == 0


def test_systemd_hears_ready_once_every_worker_serves(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    server = workers(tmp_path, f"sqlite://{tmp_path / 'l.db'}",
                     env={"NOTIFY_SOCKET": str(path)})
    try:
        server.start()
        supervisor, _ = pids(server)
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        ready = next(m for m in messages if "READY=1" in m)
        assert f"MAINPID={supervisor}" in ready
        # Only the supervisor speaks to systemd: one READY, not one per worker.
        assert sum("READY=1" in m for m in messages) == 1
        server.proc.signal(signal.SIGHUP)  # type: ignore[union-attr]
        assert "RELOADING=1" in sock.recv(4096).decode()
        while "READY=1" not in (m := sock.recv(4096).decode()):
            assert "STATUS=" in m, m
        # Each worker logged its reload before its READY (the relay may still be copying).
        wait_count(server, "configuration reloaded", 2)
        server.proc.signal(signal.SIGTERM)  # type: ignore[union-attr]
        while "STOPPING=1" not in (m := sock.recv(4096).decode()):
            pass
    finally:
        assert server.stop() == 0
        sock.close()


def test_every_worker_shows_a_disagreeing_replica(tmp_path: Path) -> None:
    """Another replica's configuration reached the store: whichever worker answers says so
    (each finds it when it reads the group for the view or the scrape)."""
    db = f"sqlite://{tmp_path / 'shared.db'}"
    first = workers(tmp_path, db, "--group", "g=3").start()
    other = None
    try:
        assert lock(first.url, "pre-reboot", "a", "g")[0] == 200  # created with 3
        other = Lockd(tmp_path, "--backend", db, "--group", "g=2", name="other").start()
        assert lock(other.url, "pre-reboot", "b", "g")[0] == 200  # applied its 2
        for _ in range(20):  # fresh connections: both workers of first answer some
            _, doc = call(first.admin_url, "GET", "/api/v1/groups/g")
            assert doc["policy"]["config_mismatch"] == {"configured_here": 3, "in_store": 2}
            assert samples(first.admin_url, "lockd_config_mismatch") == {(("group", "g"),): 1}
        _, doc = call(other.admin_url, "GET", "/api/v1/groups/g")
        assert doc["policy"]["config_mismatch"] is None
    finally:
        if other is not None:
            other.stop()
        assert first.stop() == 0


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lockd", "serve", *args],
                          capture_output=True, text=True, timeout=60)


def test_memory_refuses_more_than_one_worker() -> None:
    run = serve("--backend", "memory://", "--workers", "2", "--listen", "127.0.0.1:0")
    assert run.returncode == 2
    assert "service.workers (--workers): 2 workers cannot share memory://" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("value", ["0", "lots", "257"])
def test_a_bad_worker_count_names_the_key(value: str) -> None:
    run = serve("--workers", value, "--backend", "memory://")
    assert run.returncode == 2
    assert "service.workers (from flag for service.workers): must be" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_taken_port_stops_the_supervisor_naming_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = serve("--workers", "2", "--backend", f"sqlite://{tmp_path / 'l.db'}",
                    "--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0")
    assert run.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for the FleetLock listener" in run.stderr
    assert "(check service.address/service.port)" in run.stderr
    assert "Traceback" not in run.stderr


def test_workers_auto_starts_one_per_usable_core(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    server = workers(tmp_path, f"sqlite://{tmp_path / 'l.db'}", n="auto").start()
    try:
        out = server.proc.output()  # type: ignore[union-attr]
        if cores == 1:  # one worker: the process serves itself, as without --workers
            assert SERVING.search(out) is None and "lockd: serving (pid" in out
        else:
            assert len(pids(server)[1]) == cores
        assert lock(server.url, "pre-reboot", "a", "default")[0] == 200
    finally:
        assert server.stop() == 0


def test_one_worker_is_one_process_as_before(tmp_path: Path) -> None:
    server = workers(tmp_path, f"sqlite://{tmp_path / 'l.db'}", n="1").start()
    try:
        out = server.proc.output()  # type: ignore[union-attr]
        assert f"lockd: serving (pid {server.proc.pid}), backend" in out  # type: ignore[union-attr]
        assert not [p for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) ==
                    server.proc.pid]  # type: ignore[union-attr]
    finally:
        assert server.stop() == 0


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError):
        return -1


def test_worker_log_lines_never_interleave(tmp_path: Path) -> None:
    """Two workers writing decision lines at once: every line on stderr is whole."""
    server = workers(tmp_path, f"sqlite://{tmp_path / 'l.db'}", "--log-format", "json").start()
    try:
        asyncio.run(storm([server.url], {"default": 1}, clients=40, rounds=2,
                          hold=(0.0, 0.005), seed=5))
    finally:
        assert server.stop() == 0
    lines = [line for line in server.proc.output().splitlines()  # type: ignore[union-attr]
             if not line.startswith("lockd: ")]
    decisions = [json.loads(line) for line in lines]  # a torn line would not parse
    assert sum(d.get("logger") == "lockd.decision" for d in decisions) > 160
