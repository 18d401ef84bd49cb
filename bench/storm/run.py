"""Run a reboot storm against a FleetLock server and print the summary.

    .venv-bench/bin/python -m bench.storm.run --url http://127.0.0.1:8080/ \
        --nodes 1000 --groups 10 --slots 2 --period 300 --reboot 60 --time-scale 1/100

Starts locust headless (standalone, or one master and ``--workers`` workers), waits for it
to end by itself (every node rebooted or died, or ``--max-time``), then reads the
benchmark's own record and prints drain, rates, latency, statuses and the SAFETY verdict;
writes ``result.json`` and ``timeline.png`` in ``--out``. ``--lockd "CMD"`` starts a lockd
for the run (its slots set to ``--slots``), e.g. ``--lockd ".venv/bin/lockd serve --backend
memory://"``. Exit status: 0 safe and every live node rebooted, 1 violation, 3 incomplete,
4 the server refused the storm's groups (configure them there, see ``--group-names``),
5 otherwise fine but a mid-run command failed or never ran.

Faults at a known moment: ``--at SECONDS --run CMD`` (in pairs, repeatable) runs ``sh -c
CMD`` that many seconds after locust starts (bench/storm/hooks.py), e.g. ``--at 60 --run
"kill -9 4242"`` to kill a Redis master mid-way (bench/storm/failover.py does exactly that
on a Redis Cluster it starts). The command sees ``STORM_URLS`` and ``STORM_OUT``.

Against a server that only serves the groups it is configured with (airlock), name them:
``--group-names a,b,c`` (node i is in group i mod 3) or ``--group-prefix air-`` with
``--groups 20`` (air-0 .. air-19). By default the names get a fresh random prefix per run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench.procs import free_port
from bench.storm.hooks import HookRunner, failed, pair
from bench.storm.report import exit_status, render, summarise
from bench.storm.safety import DEFAULT_UNDECIDED, parse_undecided

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
LISTEN_RE = re.compile(r"FleetLock listening on (http://\S+)")


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *argv]
    return argv


def start_lockd(cmd: str, slots: int, out: Path, cpus: str | None,
                n: int = 0) -> tuple[subprocess.Popen, str]:
    argv = [*shlex.split(cmd), "--listen", "127.0.0.1:0", "--no-admin",
            "--default-slots", str(slots)]  # lockd at its defaults, as a user runs it
    path = out / f"lockd-{n}.log"
    log = open(path, "wb")
    proc = subprocess.Popen(pinned(argv, cpus), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = LISTEN_RE.search(path.read_text(errors="replace"))
        if m:
            return proc, m.group(1).rstrip("/") + "/"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"lockd did not start:\n{path.read_text()}")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="FleetLock base URL (zincati's base_url); several, comma-"
                   "separated, spread the nodes over replicas (node i uses URL i mod n)")
    p.add_argument("--lockd", metavar="CMD", help="start this lockd command for the run")
    p.add_argument("--replicas", type=int, default=1,
                   help="with --lockd: start this many (they must share a backend)")
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--groups", type=int, default=None,
                   help="number of groups (default 10, or the number of --group-names)")
    p.add_argument("--group-names", default="",
                   help="comma-separated group names, e.g. ones configured on the server; "
                   "node i is in name i mod n")
    p.add_argument("--group-prefix", default=None,
                   help="groups are PREFIX0 .. PREFIX<groups-1> (default: a fresh random "
                   "prefix per run, so no holder left by an earlier run can skew this one)")
    p.add_argument("--undecided-kinds", default="default", metavar="KIND[,KIND...]",
                   help="answers to a steady-state that leave it undecided, so that the node's "
                   "later holds are uncertain (no answer always is): kinds as zincati sees "
                   "them; 'default' = " + ",".join(sorted(DEFAULT_UNDECIDED))
                   + "; '*' = every non-200 answer")
    p.add_argument("--refused-after", type=int, default=10, metavar="N",
                   help="stop when the first N answers for a group all refuse it "
                   "(4xx unknown_group/invalid_group); 0 never stops")
    p.add_argument("--slots", type=int, default=1, help="slots per group on the server")
    p.add_argument("--period", type=float, default=300.0, help="poll period, real seconds")
    p.add_argument("--reboot", type=float, default=60.0, help="reboot time, real seconds")
    p.add_argument("--time-scale", default="1/100",
                   help="fraction of real time, e.g. 1/300 runs a 300 s period as 1 s")
    p.add_argument("--die-fraction", type=float, default=0.0,
                   help="fraction of nodes that die while holding a slot")
    p.add_argument("--workers", type=int, default=0,
                   help="locust workers (0 = one standalone locust process)")
    p.add_argument("--spawn-rate", type=float, default=0.0, help="users/s (default: all at once)")
    p.add_argument("--max-time", type=float, default=0.0,
                   help="bound on the storm in seconds (default: estimated from the parameters)")
    p.add_argument("--out", type=Path, default=None, help="record/result dir")
    p.add_argument("--locust-cpus", help="taskset CPU list for locust, e.g. 1")
    p.add_argument("--server-cpus", help="taskset CPU list for --lockd, e.g. 0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--at", type=float, action="append", default=[], metavar="SECONDS",
                   help="run the next --run CMD this many seconds after locust starts")
    p.add_argument("--run", action="append", default=[], metavar="CMD",
                   help="a shell command for the --at before it (in pairs, repeatable)")
    a = p.parse_args(argv)
    try:
        a.hooks = pair(a.at, a.run)
    except ValueError as exc:
        p.error(str(exc))
    if not a.url and not a.lockd:
        p.error("give --url or --lockd")
    names = [n.strip() for n in a.group_names.split(",")] if a.group_names else []
    if names:
        if any(not n for n in names) or len(set(names)) != len(names):
            p.error("--group-names: names must be non-empty and distinct")
        if a.group_prefix is not None:
            p.error("give --group-names or --group-prefix, not both")
        if a.groups is not None and a.groups != len(names):
            p.error(f"--groups {a.groups} but {len(names)} --group-names")
        a.groups = len(names)
    elif a.groups is None:
        a.groups = 10
    if a.groups < 1:
        p.error("--groups must be at least 1")
    a.names = names
    return a


def default_bound(a: argparse.Namespace, period: float, reboot: float) -> float:
    per_group = math.ceil(a.nodes / a.groups)
    rounds = math.ceil(per_group / a.slots)
    return 30.0 + 3.0 * (2 * period + rounds * (reboot + period / 4))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    scale = float(Fraction(a.time_scale))
    period, reboot = a.period * scale, a.reboot * scale
    bound = a.max_time or default_bound(a, period, reboot)
    out = a.out or Path("bench/out") / time.strftime("storm-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("record-*.jsonl"), out / "locust-stats.json"]:
        old.unlink(missing_ok=True)
    servers: list[subprocess.Popen] = []
    url = a.url or ""
    if a.lockd:
        urls = []
        for n in range(a.replicas):
            proc, one = start_lockd(a.lockd, a.slots, out, a.server_cpus, n)
            servers.append(proc)
            urls.append(one)
        url = ",".join(urls)
    # Fresh group names per run, so holders left by an earlier run cannot skew this one.
    prefix = a.group_prefix if a.group_prefix is not None else f"storm{secrets.token_hex(3)}-"
    names = a.names or [f"{prefix}{i}" for i in range(a.groups)]
    undecided = parse_undecided(a.undecided_kinds)
    spawn_rate = a.spawn_rate or a.nodes
    params: dict[str, Any] = {
        "url": url, "nodes": a.nodes, "groups": a.groups, "slots": a.slots,
        "period_s": a.period, "reboot_s": a.reboot, "time_scale": a.time_scale,
        "scaled_period_s": period, "scaled_reboot_s": reboot, "die_fraction": a.die_fraction,
        "workers": a.workers, "max_time_s": bound, "group_names": names,
        "seed": a.seed, "spawn_rate": spawn_rate, "undecided_kinds": sorted(undecided),
        "refused_after": a.refused_after,
        "hooks": [{"at_s": h.at, "cmd": h.cmd} for h in a.hooks],
    }
    (out / "params.json").write_text(json.dumps(params, indent=2))
    # The storm's groups as a config fragment airlock and lockd both read, for a server
    # that serves only the groups it is configured with.
    (out / "groups.toml").write_text("".join(
        f'[[lock.groups]]\nname = "{g}"\nslots = {a.slots}\n\n' for g in names))
    env = {**os.environ, "STORM_GROUPS": str(a.groups), "STORM_SLOTS": str(a.slots),
           "STORM_PERIOD": str(a.period), "STORM_REBOOT": str(a.reboot),
           "STORM_TIME_SCALE": a.time_scale, "STORM_DIE_FRACTION": str(a.die_fraction),
           "STORM_GROUP_NAMES": ",".join(names), "STORM_RECORD_DIR": str(out),
           "STORM_WORKERS": str(max(1, a.workers)), "STORM_SEED": str(a.seed),
           "STORM_URLS": url, "STORM_REFUSED_AFTER": str(a.refused_after),
           "PYTHONUNBUFFERED": "1"}
    locust = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING"]
    head = [*locust, "--headless", "--only-summary", "--users", str(a.nodes),
            "--spawn-rate", str(spawn_rate), "--run-time", f"{math.ceil(bound)}s",
            "--stop-timeout", "0", "--host", url.split(",")[0]]
    print(f"storm: {a.nodes} nodes, {a.groups} groups x {a.slots} slots, period {period:g}s, "
          f"reboot {reboot:g}s (time scale {a.time_scale}), target {url}, bound {bound:.0f}s, "
          f"{'standalone' if not a.workers else f'{a.workers} workers'}; record in {out}",
          file=sys.stderr, flush=True)
    procs: list[subprocess.Popen] = []
    log = open(out / "locust.log", "wb")
    hooks = HookRunner(a.hooks, out, env={**os.environ, "STORM_URLS": url,
                                          "STORM_OUT": str(out)})
    try:
        if a.workers:
            port = free_port()
            master = subprocess.Popen(
                pinned([*head, "--master", "--expect-workers", str(a.workers),
                        "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)],
                       a.locust_cpus), env=env, stdout=log, start_new_session=True)
            for _ in range(a.workers):
                procs.append(subprocess.Popen(
                    pinned([*locust, "--worker", "--master-host", "127.0.0.1",
                            "--master-port", str(port)], a.locust_cpus),
                    env=env, stdout=log, stderr=log, start_new_session=True))
        else:
            master = subprocess.Popen(pinned(head, a.locust_cpus), env=env, stdout=log,
                                      start_new_session=True)
        procs.insert(0, master)
        hooks.start()
        try:
            master.wait(bound + 60)
        except subprocess.TimeoutExpired:
            print("storm: locust did not stop by itself; killing it", file=sys.stderr)
        for p in procs[1:]:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                pass
    finally:
        hook_records = hooks.stop()
        for p in procs:
            stop(p)
        log.close()
        for server in servers:
            stop(server)
    result = summarise(out, slots=a.slots, reboot=reboot, params=params,
                       png=out / "timeline.png", undecided=undecided)
    result["hooks"] = hook_records
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(render(result))
    for r in hook_records:
        done = (f"started {r['started_s']}s, exit {r['rc']}, {r['duration_s']}s"
                if r["ran"] else "not run (the storm ended first)")
        print(f"  at {r['at_s']:g}s     {r['cmd']!r}: {done}; output {r['log']}")
    print(f"  result       {out / 'result.json'}, {out / 'timeline.png'}")
    status = exit_status(result)
    return 5 if status == 0 and failed(hook_records) else status


if __name__ == "__main__":
    raise SystemExit(main())
