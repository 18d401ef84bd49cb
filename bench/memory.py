"""Resident memory of one lockd: idle, with N idle keep-alive connections, and with G
groups each holding a slot.

    .venv/bin/python -m bench.memory --connections 10000 --groups 100000

lockd runs as a subprocess under ``prlimit`` (room for the connections) on a sqlite store
with ``synchronous=off`` (the measurement is of lockd's memory, not of fsync); RSS is read
from /proc/<pid>/status. Runs in lockd's venv; prints a table and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.procs import Lockd, find_binary

HEADERS = {"fleet-lock-protocol": "true"}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _addr(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


def hold_connections(url: str, n: int) -> list[socket.socket]:
    """n keep-alive connections, each having made one request, then idle."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    socks = []
    for i in range(n):
        s = socket.create_connection(_addr(url))
        s.sendall(request)
        socks.append(s)
        if i % 1000 == 999:
            print(f"  {i + 1} connections", file=sys.stderr, flush=True)
    for s in socks:
        s.settimeout(10)
        s.recv(4096)  # the answer; the connection stays open (keep-alive)
    return socks


async def fill_groups(url: str, groups: int, concurrency: int = 64) -> None:
    queue = iter(range(groups))
    done = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        for i in queue:
            body = {"client_params": {"id": f"node-{i}", "group": f"g{i}"}}
            async with session.post(url + "/v1/pre-reboot", json=body, headers=HEADERS) as r:
                if r.status != 200:
                    raise RuntimeError(f"group g{i}: {r.status} {await r.text()}")
            done += 1
            if done % 10000 == 0:
                print(f"  {done} groups held", file=sys.stderr, flush=True)

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--groups", type=int, default=100_000)
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    need = args.connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, need)), hard))
    prlimit = find_binary("prlimit", "util-linux")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lockd-memory-") as tmp:
        server = Lockd(
            Path(tmp), "--backend", f"sqlite://{tmp}/m.db?synchronous=off",
            "--log-level", "warning", "--set", "service.idle_timeout_s=600",
            "--set", f"service.max_connections={need}",
            wrapper=[prlimit, f"--nofile={need + 512}", "--"],
        ).start()
        try:
            pid = server.proc.pid  # type: ignore[union-attr]
            figures["idle_mib"] = rss_mib(pid)
            socks = hold_connections(server.url, args.connections)
            time.sleep(1)
            figures["connections"] = args.connections
            figures["with_connections_mib"] = rss_mib(pid)
            for s in socks:
                s.close()
            time.sleep(2)
            figures["after_connections_closed_mib"] = rss_mib(pid)
            started = time.monotonic()
            asyncio.run(fill_groups(server.url, args.groups))
            figures["groups"] = args.groups
            figures["fill_seconds"] = round(time.monotonic() - started, 1)
            figures["with_groups_mib"] = rss_mib(pid)
        finally:
            server.stop()
    for k, v in figures.items():
        print(f"{k:32} {v:10.1f}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
