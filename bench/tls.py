"""What a TLS handshake costs lockd per FleetLock request (issue #15).

    .venv/bin/python -m bench.tls [--runs 3] [--duration 5] [--connections 16]

zincati's HTTP client does not keep a connection open for the 300 s between two polls, so
every request of a waiting node may pay a TCP connection and, over TLS, a handshake. This
starts two lockd (``memory://``, the default log level, one slot per group, a holder in the
group): one plain, one with native TLS (``service.tls``) on an ECDSA P-256 certificate made
for the run with ``openssl``; both pinned to ``--server-cpus`` (0), the load tools to
``--load-cpus`` (1). Every request is a waiter's ``pre-reboot`` to the full group (423,
nothing written), the request a waiting node sends. The modes:

- ``keepalive-http``: wrk, keep-alive, the reference (as bench/throughput.py's ``refuse``);
- ``keepalive-tls13``: wrk over one TLS 1.3 connection each, no handshakes after the first;
- ``new-http`` (wrk) and ``new-http-ab`` (ab): one request per TCP connection;
- ``full-tls12``, ``full-tls13``: ab (apache2-utils) without keep-alive: a full handshake for
  every request (ab never offers a session to resume);
- ``resumed-tls12``, ``resumed-tls13``: wrk with ``Connection: close``: wrk keeps its SSL
  object's session across reconnects, so every new connection resumes (a session ticket).

wrk has no TLS version option: it gets an OpenSSL configuration file (``OPENSSL_CONF``)
with ``MinProtocol = MaxProtocol``; ab takes ``-f TLS1.2``/``-f TLS1.3``. Before measuring,
each TLS mode runs for a second against a probe (an aiohttp server on lockd's own server
context, ``lockd.tlsfiles.server_context``) that counts every request's TLS version and
whether its session was resumed; a mode that is not what its name says stops the run.

For each measurement: requests/s; lockd's CPU time (``/proc/PID/stat``, user + system, all
threads) divided by the requests answered, in ms per request; and how busy the load tool
was (its CPU seconds per second: near 1.0 it, not lockd, was the limit). Each mode's ratio
to ``keepalive-http`` is taken within a run, seconds apart; medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import Lockd, Proc, find_binary, free_port, wait_for_port
from bench.throughput import parse_wrk, pin

HERE = Path(__file__).resolve().parent
LUA = HERE / "tls.lua"
GROUP = "tlsbench-full"  # throughput.lua's refuse mode asks PREFIX .. "full"
PREFIX = "tlsbench-"


@dataclass(frozen=True)
class Mode:
    name: str
    tool: str  # "wrk" or "ab"
    tls: str | None  # None (plain HTTP), "1.2" or "1.3"
    new_connections: bool
    resumed: bool = False  # what the probe must see on every TLS request


MODES = (
    Mode("keepalive-http", "wrk", None, False),
    Mode("keepalive-tls13", "wrk", "1.3", False),
    Mode("new-http", "wrk", None, True),
    Mode("new-http-ab", "ab", None, True),
    Mode("full-tls12", "ab", "1.2", True),
    Mode("full-tls13", "ab", "1.3", True),
    Mode("resumed-tls12", "wrk", "1.2", True, resumed=True),
    Mode("resumed-tls13", "wrk", "1.3", True, resumed=True),
)
REFERENCE = "keepalive-http"


@dataclass
class Measurement:
    rps: float
    requests: int
    unexpected: int  # answers other than 423, failed or errored requests
    server_ms_per_request: float
    load_cpu_use: float  # the load tool's CPU seconds per wall second


# --- the certificate and the OpenSSL configuration for wrk ----------------------------------


def certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1, and its key."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [find_binary("openssl", "openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def openssl_conf(tmp: Path, version: str) -> Path:
    """An OPENSSL_CONF that limits every TLS context of the process to one version."""
    path = tmp / f"openssl-tls{version}.cnf"
    path.write_text(
        "openssl_conf = default_conf\n[default_conf]\nssl_conf = ssl_sect\n"
        "[ssl_sect]\nsystem_default = system_default_sect\n"
        f"[system_default_sect]\nMinProtocol = TLSv{version}\nMaxProtocol = TLSv{version}\n")
    return path


# --- the load tools -------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pinned(argv: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus and shutil.which("taskset") else argv


def run_wrk(mode: Mode, url: str, seconds: int, conns: int, cpus: str | None,
            confs: dict[str, Path]) -> tuple[int, int, float]:
    """(requests, unexpected answers, load CPU seconds) of one wrk run."""
    env = dict(os.environ)
    if mode.tls:
        env["OPENSSL_CONF"] = str(confs[mode.tls])
    argv = ["wrk", "-t", str(conns), "-c", str(conns), "-d", f"{seconds}s", "-s", str(LUA),
            url, "--", "refuse", PREFIX, *(["close"] if mode.new_connections else [])]
    before = _children_cpu()
    run = subprocess.run(_pinned(argv, cpus), capture_output=True, text=True, env=env,
                         timeout=seconds + 60)
    cpu = _children_cpu() - before
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed: {run.stderr or run.stdout}")
    s = parse_wrk(run.stdout)
    # Every answer must be the 423 of a full group: anything else is counted.
    return s.requests, (s.requests - s.non2xx) + s.errors, cpu


def parse_ab(out: str) -> tuple[int, int, str]:
    """(complete requests, unexpected: failed + 2xx/3xx ones, negotiated protocol) from ab."""
    complete = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    protocol = re.search(r"SSL/TLS Protocol:\s+(\S+)", out)
    # ab also counts the non-2xx answers of requests cut off by its time limit, which are
    # not in "Complete requests": more refusals than requests is no 2xx at all.
    ok_answers = max(0, complete - (int(non2xx.group(1)) if non2xx else 0))
    return complete, failed + ok_answers, protocol.group(1) if protocol else ""


def run_ab(mode: Mode, url: str, seconds: int, conns: int, cpus: str | None,
           body: Path) -> tuple[int, int, float]:
    """(requests, unexpected answers, load CPU seconds) of one ab run, no keep-alive."""
    # -n after -t: ab's -t alone caps the run at 50,000 requests.
    argv = [find_binary("ab", "apache2-utils"), "-q", "-t", str(seconds), "-n", "100000000",
            "-c", str(conns), "-p", str(body), "-T", "application/json",
            "-H", "fleet-lock-protocol: true", "-H", "accept: */*"]
    if mode.tls:
        argv += ["-f", f"TLS{mode.tls}"]
    before = _children_cpu()
    run = subprocess.run(_pinned([*argv, f"{url}/v1/pre-reboot"], cpus), capture_output=True,
                         text=True, timeout=seconds + 60)
    cpu = _children_cpu() - before
    if run.returncode != 0 and "Complete requests" not in run.stdout:
        raise RuntimeError(f"ab failed: {run.stderr or run.stdout}")
    complete, unexpected, protocol = parse_ab(run.stdout)
    if mode.tls and protocol.split(",")[0] != f"TLSv{mode.tls}":
        raise RuntimeError(f"{mode.name}: ab negotiated {protocol!r}")
    return complete, unexpected, cpu


# --- lockd, and the probe that checks what each mode really does ----------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the run's own self-signed certificate
    return context


def take_the_slot(url: str) -> None:
    """A holder takes the group's only slot, so that every waiter gets 423."""
    body = json.dumps({"client_params": {"id": "holder", "group": GROUP}}).encode()
    req = urllib.request.Request(f"{url}/v1/pre-reboot", data=body, method="POST",
                                 headers={"fleet-lock-protocol": "true"})
    with urllib.request.urlopen(req, timeout=10, context=_unverified()) as resp:
        if resp.status != 200:
            raise RuntimeError(f"the holder got {resp.status}")


def start_lockd(tmp: Path, cpus: str | None, cert: Path | None, key: Path | None) -> Lockd:
    args = ["--backend", "memory://", "--no-admin", "--default-slots", "1"]
    if cert and key:
        args += ["--set", "service.tls=true", "--set", f"service.tls_cert={cert}",
                 "--set", f"service.tls_key={key}"]
    lockd = Lockd(tmp, *args, name="lockd-tls" if cert else "lockd-http").start()
    pin(lockd.proc.pid, cpus)
    take_the_slot(lockd.url.rstrip("/"))
    return lockd


def serve_probe(port: int, cert: str, key: str) -> None:
    """A TLS server on lockd's own server context that answers every POST like a refusal
    and counts each request's (TLS version, session resumed); GET /stats returns and
    resets the counts."""
    from aiohttp import web

    from lockd import tlsfiles

    seen: Counter[str] = Counter()

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        tls = request.transport.get_extra_info("ssl_object")
        seen[f"{tls.version()} {'resumed' if tls.session_reused else 'full'}"] += 1
        return web.json_response({"kind": "failed_lock_semaphore_full", "value": "-"},
                                 status=423)

    async def stats(request: web.Request) -> web.Response:
        counts = dict(seen)
        seen.clear()
        return web.json_response(counts)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", refuse)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = tlsfiles.server_context(cert, key)
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def probe_counts(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/stats", timeout=10, context=_unverified()) as resp:
        return json.loads(resp.read())


def check_modes(tmp: Path, cert: Path, key: Path, a: argparse.Namespace,
                confs: dict[str, Path], body: Path) -> dict[str, dict[str, int]]:
    """Run every TLS mode for a second against the probe: each must negotiate its version,
    and resume every session (``resumed``) or none (the others, after the first)."""
    port = free_port()
    probe = Proc([sys.executable, "-m", "bench.tls", "--serve-probe", str(port), str(cert),
                  str(key)], tmp / "probe.log").start()
    seen: dict[str, dict[str, int]] = {}
    try:
        wait_for_port(port, proc=probe.proc)
        pin(probe.pid, a.server_cpus)
        url = f"https://127.0.0.1:{port}"
        probe_counts(url)
        for mode in MODES:
            if not mode.tls:
                continue
            run = run_ab if mode.tool == "ab" else run_wrk
            run(mode, url, 1, a.connections, a.load_cpus, body if mode.tool == "ab" else confs)
            counts = probe_counts(url)
            seen[mode.name] = counts
            want = f"TLSv{mode.tls} {'resumed' if mode.resumed else 'full'}"
            total = sum(counts.values())
            # A tool's first connection cannot resume (it has no session yet), and a
            # keep-alive connection shakes hands once: a handful of full ones is expected.
            if mode.new_connections and counts.get(want, 0) < total - 2 * a.connections:
                raise SystemExit(f"{mode.name}: expected every request {want!r}, saw {counts}")
            if not all(k.startswith(f"TLSv{mode.tls} ") for k in counts) or not total:
                raise SystemExit(f"{mode.name}: expected TLS {mode.tls} only, saw {counts}")
    finally:
        probe.stop()
    return seen


# --- measuring ------------------------------------------------------------------------------


def measure(a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lockd-tls-") as name:
        tmp = Path(name)
        cert, key = certificate(tmp)
        confs = {v: openssl_conf(tmp, v) for v in ("1.2", "1.3")}
        body = tmp / "body.json"
        body.write_text(json.dumps({"client_params": {"id": "waiter", "group": GROUP}}))
        checks = check_modes(tmp, cert, key, a, confs, body)
        print(f"modes checked against the probe: {json.dumps(checks)}", file=sys.stderr)
        plain = start_lockd(tmp, a.server_cpus, None, None)
        tls = start_lockd(tmp, a.server_cpus, cert, key)
        runs: list[dict[str, dict[str, Any]]] = []
        loads: list[str] = []
        try:
            for n in range(a.runs):
                loads.append(Path("/proc/loadavg").read_text().strip())
                one: dict[str, dict[str, Any]] = {}
                for mode in MODES:
                    server = tls if mode.tls else plain
                    url = server.url.rstrip("/")
                    cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
                    if mode.tool == "ab":
                        requests, unexpected, load = run_ab(mode, url, a.duration,
                                                            a.connections, a.load_cpus, body)
                    else:
                        requests, unexpected, load = run_wrk(mode, url, a.duration,
                                                             a.connections, a.load_cpus, confs)
                    wall = time.monotonic() - t0
                    cpu = cpu_seconds(server.proc.pid) - cpu0
                    m = Measurement(requests / a.duration, requests, unexpected,
                                    1000 * cpu / max(1, requests), load / wall)
                    one[mode.name] = asdict(m)
                    print(f"run {n + 1}/{a.runs} {mode.name:16} {m.rps:9,.0f} req/s  "
                          f"lockd {m.server_ms_per_request:.3f} ms CPU/req  load tool "
                          f"{m.load_cpu_use:.2f} CPU  unexpected {m.unexpected}",
                          file=sys.stderr, flush=True)
                runs.append(one)
        finally:
            tls.stop()
            plain.stop()
    return {"runs": runs, "loadavg": loads, "checks": checks,
            "connections": a.connections, "duration_s": a.duration,
            "openssl": subprocess.run(["openssl", "version"], capture_output=True,
                                      text=True).stdout.strip()}


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per mode: median req/s, median ratio to keep-alive HTTP (within each run), median
    lockd ms CPU per request, and every run's figures."""
    rows = []
    for mode in MODES:
        ms = [run[mode.name] for run in res["runs"]]
        ratios = [run[mode.name]["rps"] / run[REFERENCE]["rps"] for run in res["runs"]]
        rows.append({
            "mode": mode.name, "tool": mode.tool,
            "rps": statistics.median(m["rps"] for m in ms),
            "rps_runs": [round(m["rps"]) for m in ms],
            "x_keepalive": statistics.median(ratios),
            "x_keepalive_runs": [round(r, 2) for r in ratios],
            "ms_cpu": statistics.median(m["server_ms_per_request"] for m in ms),
            "ms_cpu_runs": [round(m["server_ms_per_request"], 3) for m in ms],
            "load_cpu_use": max(m["load_cpu_use"] for m in ms),
            "unexpected": sum(m["unexpected"] for m in ms),
        })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| mode | tool | req/s (runs) | x keep-alive HTTP (runs) | lockd ms CPU / request "
             "(runs) | load tool CPU, max | unexpected |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['tool']} | {r['rps']:,.0f} "
            f"({', '.join(f'{x:,}' for x in r['rps_runs'])}) | {r['x_keepalive']:.2f} "
            f"({', '.join(f'{x:.2f}' for x in r['x_keepalive_runs'])}) | {r['ms_cpu']:.3f} "
            f"({', '.join(f'{x:.3f}' for x in r['ms_cpu_runs'])}) | {r['load_cpu_use']:.2f} "
            f"| {r['unexpected']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--load-cpus", default="1")
    p.add_argument("--json", type=Path, default=Path("bench/out/tls.json"))
    p.add_argument("--serve-probe", nargs=3, metavar=("PORT", "CERT", "KEY"),
                   help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve_probe:
        serve_probe(int(a.serve_probe[0]), a.serve_probe[1], a.serve_probe[2])
        return 0
    res = measure(a)
    rows = summary(res)
    res["summary"] = rows
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=2))
    print(table(rows))
    print(f"load average before each run: {'; '.join(res['loadavg'])}")
    print(f"full results: {a.json}")
    return 1 if any(r["unexpected"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
