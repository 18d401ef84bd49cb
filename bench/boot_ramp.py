"""The reboot storm's boot ramp alone, in seconds rather than a storm's minutes (issue #15).

New nodes connect at ``--rate`` a second; each sends ``steady-state`` at once on its fresh
connection, then ``pre-reboot`` on the same one every ``--period`` seconds (+0-10%) until
granted or ``--poll-for`` seconds after the ramp, keeping the connection open as the storm's
nodes do, so the server holds every connection opened so far. Prints the latency
percentiles of each kind of request and the statuses, as JSON; with ``--lockd-tree``, also
the CPU seconds lockd spent on the ramp (``server_cpu_s``), which the machine's other load
slows down but does not add to, unlike the latencies.

    taskset -c 0 .venv/bin/lockd serve --state-dir /tmp/ramp-state --listen 127.0.0.1:18080 &
    taskset -c 1 .venv/bin/python -m bench.boot_ramp --url http://127.0.0.1:18080/ \
        --nodes 5000 --rate 1000

``--lockd-tree DIR`` starts lockd itself from another checkout (``bench.procs.Lockd``), on
``--server-cpus``, with a fresh sqlite state dir: how ``bench/bisect_ramp.sh`` compares
commits. The client is raw asyncio streams (not aiohttp's client) so that it holds
thousands of connections on one core with little overhead of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from bench.procs import Lockd


def request(host: str, path: str, node: str, group: str) -> bytes:
    body = (
        '{\n  "client_params": {\n'
        f'    "id": "{node}",\n    "group": "{group}"\n'
        "  }\n}"
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nfleet-lock-protocol: true\r\n"
        f"accept: */*\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   data: bytes) -> int:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def node(index: int, args: argparse.Namespace, results: dict, held: list) -> None:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    base = parts.path.rstrip("/")
    name, group = f"node-{index}", f"ramp-{index % args.groups}"
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                args.timeout)
        held.append(writer)
        op = "steady-state"
        while True:
            sent = time.perf_counter()
            status = await asyncio.wait_for(
                exchange(reader, writer, request(f"{host}:{port}", f"{base}/v1/{op}", name,
                                                 group)),
                args.timeout)
            results[op].append((time.perf_counter() - sent) * 1000.0)
            results["statuses"][f"{op} {status}"] += 1
            if op == "steady-state":
                results["first"].append((time.perf_counter() - start) * 1000.0)
                op = "pre-reboot"
                continue
            if status == 200 or time.perf_counter() > args.polls_until:
                return
            # zincati's next poll: its period with 0-10% jitter, on the same connection.
            await asyncio.sleep(args.period * random.uniform(1.0, 1.1))
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as error:
        results["statuses"][f"error {type(error).__name__}"] += 1


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (``/proc/PID/stat``): what the ramp cost
    the server, which other processes on its core slow down but do not add to."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50": round(cuts[49], 1), "p95": round(cuts[94], 1),
            "p99": round(cuts[98], 1), "max": round(max(values), 1)}


async def ramp(args: argparse.Namespace) -> dict:
    results: dict = {"steady-state": [], "pre-reboot": [], "first": [],
                     "statuses": Counter()}
    held: list[asyncio.StreamWriter] = []
    tasks = []
    began = time.perf_counter()
    args.polls_until = began + args.nodes / args.rate + args.poll_for
    for index in range(args.nodes):
        # Start each node on its slot of the ramp, however late the loop runs.
        delay = began + index / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(node(index, args, results, held)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - began
    for writer in held:
        writer.close()
    return {
        "nodes": args.nodes, "rate": args.rate, "wall_s": round(wall, 1),
        "steady-state": percentiles(results["steady-state"]),
        "pre-reboot": percentiles(results["pre-reboot"]),
        "both": percentiles(results["first"]),
        "statuses": dict(sorted(results["statuses"].items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running lockd's FleetLock base URL")
    parser.add_argument("--lockd-tree", type=Path, help="start lockd from this checkout")
    parser.add_argument("--server-cpus", default="0", help="taskset CPUs for that lockd")
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000.0, help="new nodes a second")
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--period", type=float, default=10.0,
                        help="seconds between a node's pre-reboot polls (the storm's 300 s x 1/30)")
    parser.add_argument("--poll-for", type=float, default=10.0,
                        help="nodes keep polling this long after the ramp ends")
    args = parser.parse_args(argv)
    if (args.url is None) == (args.lockd_tree is None):
        parser.error("give one of --url and --lockd-tree")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if args.url is not None:
        print(json.dumps(asyncio.run(ramp(args))))
        return 0
    with tempfile.TemporaryDirectory(prefix="boot-ramp-") as tmp:
        lockd = Lockd(Path(tmp), "--state-dir", f"{tmp}/state",
                      wrapper=("taskset", "-c", args.server_cpus), tree=args.lockd_tree)
        lockd.start(timeout=60)
        try:
            args.url = lockd.url
            assert lockd.proc is not None
            before = cpu_seconds(lockd.proc.pid)
            result = asyncio.run(ramp(args))
            result["server_cpu_s"] = round(cpu_seconds(lockd.proc.pid) - before, 2)
        finally:
            lockd.stop()
    result["tree"] = str(args.lockd_tree)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
