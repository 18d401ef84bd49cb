"""Real Prometheus and Alertmanager processes for the health-gate tests, on free loopback
ports in the test's directory, stopped by PID (bench.procs.Proc). Debian packages:
``prometheus`` and ``prometheus-alertmanager`` (tests/ensure_servers.sh installs them)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.procs import Proc, find_binary, free_port, wait_for_port

FIRING_RULES = """
groups:
  - name: lockd-test
    interval: 1s
    rules:
      - alert: NodeDown
        expr: vector(1)
        labels: {severity: critical}
      - alert: Watchdog
        expr: vector(1)
        labels: {severity: none}
      - alert: SlowDisk
        expr: vector(1)
        for: 1h
        labels: {severity: warning}
"""
QUIET_RULES = """
groups:
  - name: lockd-test
    interval: 1s
    rules:
      - alert: NodeDown
        expr: vector(1) > 2
"""


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


class PrometheusServer:
    def __init__(self, workdir: Path, rules: str) -> None:
        self.binary = find_binary("prometheus", "prometheus")
        self.workdir = workdir
        self.rules = rules
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "rules.yml").write_text(self.rules)
        (self.workdir / "prometheus.yml").write_text(
            "global:\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n"
        )
        argv = [
            self.binary,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.proc = Proc(argv, self.workdir / "prometheus.log", cwd=self.workdir).start()
        wait_for_port(self.port, 30, proc=self.proc.proc)
        self._wait(lambda: urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200)
        return self

    def alerts(self) -> list[dict[str, Any]]:
        return list(get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"])

    def wait_for_alerts(self, count: int) -> None:
        self._wait(lambda: len(self.alerts()) >= count)

    def alerts_api_requests(self) -> float:
        """prometheus_http_requests_total for /api/v1/alerts, read from Prometheus' own
        /metrics (not through the alerts API, so reading it does not count)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("prometheus_http_requests_total{") and \
                    'handler="/api/v1/alerts"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def _wait(self, ready: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                out = self.proc.output()[-3000:] if self.proc else ""
                raise TimeoutError(f"prometheus not ready:\n{out}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


class AlertmanagerServer:
    def __init__(self, workdir: Path) -> None:
        self.binary = find_binary("prometheus-alertmanager", "prometheus-alertmanager")
        self.workdir = workdir
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AlertmanagerServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "alertmanager.yml").write_text(
            "route:\n  receiver: none\nreceivers:\n  - name: none\n"
        )
        argv = [
            self.binary,
            f"--config.file={self.workdir / 'alertmanager.yml'}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no gossip port on every interface
        ]
        self.proc = Proc(argv, self.workdir / "alertmanager.log", cwd=self.workdir).start()
        wait_for_port(self.port, 30, proc=self.proc.proc)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"alertmanager not ready:\n{self.proc.output()[-3000:]}")
            time.sleep(0.1)

    def post(self, path: str, doc: Any) -> Any:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(doc).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None
