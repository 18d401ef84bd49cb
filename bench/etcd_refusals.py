"""Where a refusal on etcd:// goes: lockd's and etcd's CPU per request, and the view's hits
and misses, under wrk's refusal scenario (bench/throughput.lua) for 6 s (issue #15).

    .venv/bin/python -m bench.etcd_refusals [TREE] [--profile OUT.txt]

TREE: a checkout whose ``lockd`` package to run (this one by default). lockd (one slot per
group, defaults otherwise) on CPU 0 and wrk on CPU 1; etcd unpinned. ``--profile`` also
records a py-spy raw profile of lockd for 4 s (``/tmp/spy/bin/py-spy`` or ``$PY_SPY``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.procs import Lockd
from bench.servers import EtcdServer

HERE = Path(__file__).resolve().parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def view_lookups(admin_url: str) -> dict[str, float]:
    with urllib.request.urlopen(admin_url.rstrip("/") + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {m[1]: float(m[2]) for m in
            re.finditer(r'^lockd_view_lookups_total\{result="(\w+)"\} (\S+)$', text, re.M)}


def wrk(url: str, seconds: int) -> list[str]:
    return ["taskset", "-c", "1", "wrk", "-t16", "-c16", f"-d{seconds}s", "-s",
            str(HERE / "throughput.lua"), url, "--", "refuse", "p-"]


def main() -> None:
    args = sys.argv[1:]
    profile = None
    if "--profile" in args:
        i = args.index("--profile")
        profile = args[i + 1]
        del args[i:i + 2]
    tree = Path(args[0]).resolve() if args else None
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EtcdServer(Path(tmp)).start()
        try:
            server = Lockd(Path(tmp), "--backend", f"etcd://{etcd.endpoint}",
                           "--default-slots", "1", wrapper=["taskset", "-c", "0"], tree=tree)
            server.start()
            try:
                url = server.url.rstrip("/")
                for group in ("relock", "full"):
                    body = json.dumps({"client_params": {"id": "holder", "group": f"p-{group}"}})
                    urllib.request.urlopen(urllib.request.Request(
                        url + "/v1/pre-reboot", body.encode(), method="POST",
                        headers={"fleet-lock-protocol": "true"}), timeout=10).close()
                subprocess.run(wrk(url, 1), capture_output=True, check=True)  # warm-up
                before = view_lookups(server.admin_url)
                lockd0, etcd0 = cpu_seconds(server.proc.pid), cpu_seconds(etcd.proc.pid)
                load = subprocess.Popen(wrk(url, 6), stdout=subprocess.PIPE, text=True)
                if profile:
                    time.sleep(1)
                    subprocess.run([os.environ.get("PY_SPY", "/tmp/spy/bin/py-spy"), "record",
                                    "-p", str(server.proc.pid), "-d", "4", "-r", "200", "-f",
                                    "raw", "-o", profile], capture_output=True, check=True)
                out = load.communicate()[0]
                lockd1, etcd1 = cpu_seconds(server.proc.pid), cpu_seconds(etcd.proc.pid)
                after = view_lookups(server.admin_url)
            finally:
                server.stop()
        finally:
            etcd.stop()
    match = re.search(r"(\d+) requests in", out)
    assert match, out
    n = int(match[1])
    print(f"requests {n}  lockd {1e6 * (lockd1 - lockd0) / n:.1f} us/request  "
          f"etcd {1e6 * (etcd1 - etcd0) / n:.1f} us/request  "
          + "  ".join(f"view {k} {after[k] - before.get(k, 0):.0f}" for k in sorted(after)))


if __name__ == "__main__":
    main()
