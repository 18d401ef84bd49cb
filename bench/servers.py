"""The stores lockd runs on, as real processes: redis-server and etcd (v2 API enabled).

Started on free loopback ports in the caller's directory and stopped by PID; used by the
test fixtures (tests/servers.py) and by bench/throughput.py.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from bench.procs import Proc, find_binary, free_port, wait_for_port


class RedisServer:
    """One redis-server; ``restart`` keeps its data dir (AOF on by default)."""

    def __init__(self, workdir: Path, *, appendonly: bool = True) -> None:
        self.binary = find_binary("redis-server", "redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--protected-mode",
            "no",
        ]
        self.proc = Proc(argv, self.workdir / "redis.log").start()
        wait_for_port(self.port, proc=self.proc.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class EtcdServer:
    """One etcd member (v2 API enabled), or a member of a loopback cluster."""

    def __init__(
        self,
        workdir: Path,
        name: str = "m0",
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
    ) -> None:
        self.binary = find_binary("etcd", "etcd-server")
        self.workdir = workdir
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.initial_cluster = f"{name}=http://127.0.0.1:{self.peer_port}"
        self.cluster_state = "new"
        self.cluster_token = f"lockd-test-{self.peer_port}"
        self.proc: Proc | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, wait: bool = True) -> EtcdServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.workdir / f"{self.name}.etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{self.client_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{self.client_port}",
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-state",
            self.cluster_state,
            "--initial-cluster-token",
            self.cluster_token,
            "--enable-v2=true",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        self.proc = Proc(argv, self.workdir / f"{self.name}.log").start()
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        wait_for_port(self.client_port, timeout, proc=self.proc.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=2) as resp:
                    if json.load(resp).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"etcd {self.name} not healthy:\n{self.proc.output()[-3000:]}")

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


class EtcdCluster:
    """Three (or n) etcd members on loopback."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.members = [EtcdServer(workdir, f"m{i}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial
            m.cluster_token = self.members[0].cluster_token

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self) -> EtcdCluster:
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_healthy()
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()
