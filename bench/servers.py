"""The stores lockd runs on, as real processes: redis-server (alone or as a Redis Cluster)
and etcd (v2 API enabled).

Started on free loopback ports in the caller's directory and stopped by PID; used by the
test fixtures (tests/servers.py) and by bench/throughput.py.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bench.procs import Proc, find_binary, free_port, wait_for_port


class RedisServer:
    """One redis-server; ``restart`` keeps its data dir (AOF on by default)."""

    def __init__(
        self, workdir: Path, *, appendonly: bool = True, extra: Sequence[str] = ()
    ) -> None:
        self.binary = find_binary("redis-server", "redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.appendonly = appendonly
        self.extra = list(extra)
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
            *self.extra,
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


class RedisClusterServer:
    """A Redis Cluster on loopback: ``masters`` masters with ``replicas`` replicas each.

    Every node is a :class:`RedisServer` (AOF, ``appendfsync always``) with
    ``--cluster-enabled yes``, its cluster config file and bus port in its own directory;
    ``redis-cli --cluster create`` assigns the slots and the replicas. ``node_timeout_ms``
    is how long a master may be silent before the others fail it over to its replica
    (Redis' default is 15 s; the tests want a crash noticed in about a second).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        tls: Path | None = None,
    ) -> None:
        self.cli = find_binary("redis-cli", "redis-tools")
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        self.tls = tls
        # With ``tls`` (a directory with ca.crt, server.crt/key, client.crt/key): TLS
        # only, between the nodes too, and clients must show a certificate.
        self.cli_tls: list[str] = []
        tls_args: list[str] = []
        if tls is not None:
            self.cli_tls = ["--tls", "--cacert", str(tls / "ca.crt"),
                            "--cert", str(tls / "client.crt"), "--key", str(tls / "client.key")]
            tls_args = ["--tls-cluster", "yes", "--tls-replication", "yes",
                        "--tls-cert-file", str(tls / "server.crt"),
                        "--tls-key-file", str(tls / "server.key"),
                        "--tls-ca-cert-file", str(tls / "ca.crt"), "--tls-auth-clients", "yes"]
        self.tls_args = tls_args
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = [self._new_node(i)
                                         for i in range(masters * (1 + replicas))]

    def _new_node(self, i: int) -> RedisServer:
        node_dir = self.workdir / f"node{i}"
        node = RedisServer(node_dir)
        if self.tls is not None:  # the node's port serves TLS; no plain port at all
            port_args = ["--port", "0", "--tls-port", str(node.port), *self.tls_args]
        else:
            port_args = []
        node.extra = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node_dir / "nodes.conf"),
            "--cluster-port", str(free_port()),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # Replicas sync at once instead of waiting 5 s for more replicas to batch.
            "--repl-diskless-sync-delay", "0",
            *port_args,
        ]
        return node

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node (any one would do to start); with
        TLS, ``rediss+cluster://`` with the client certificate."""
        if self.tls is None:
            return "redis+cluster://" + ",".join(self.addresses)
        return ("rediss+cluster://" + ",".join(self.addresses)
                + f"?ssl_ca_certs={self.tls / 'ca.crt'}&ssl_certfile={self.tls / 'client.crt'}"
                f"&ssl_keyfile={self.tls / 'client.key'}")

    def start(self, timeout: float = 30.0) -> RedisClusterServer:
        try:
            for node in self.nodes:
                node.start()
        except BaseException:  # a node that did not start: stop those that did
            self.stop()
            raise
        run = subprocess.run(
            [self.cli, *self.cli_tls, "--cluster", "create", *self.addresses,
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout,
        )
        if run.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{run.stdout}{run.stderr}")
        self.wait_ok(timeout)
        return self

    def add_master(self, timeout: float = 30.0) -> RedisServer:
        """Start one more node and join it to the cluster as a master without slots."""
        node = self._new_node(len(self.nodes)).start()
        self.nodes.append(node)
        run = subprocess.run(
            [self.cli, *self.cli_tls, "--cluster", "add-node", f"127.0.0.1:{node.port}",
             self.addresses[0]], capture_output=True, text=True, timeout=timeout)
        if run.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster add-node failed:\n{run.stdout}{run.stderr}")
        self.masters += 1
        self.wait_ok(timeout)
        return node

    def node_id(self, node: RedisServer) -> str:
        return self.command(node, "cluster", "myid").strip()

    def move_slot(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """Move one hash slot and its keys from master ``source`` to master ``target``, as
        a resharding does: IMPORTING/MIGRATING, MIGRATE of each key, then SETSLOT NODE."""
        src, dst = self.node_id(source), self.node_id(target)
        self.command(target, "cluster", "setslot", str(slot), "importing", src)
        self.command(source, "cluster", "setslot", str(slot), "migrating", dst)
        while keys := self.command(source, "cluster", "getkeysinslot", str(slot), "100").split():
            self.command(source, "migrate", "127.0.0.1", str(target.port), "", "0", "5000",
                         "keys", *keys)
        for node in self.masters_now():
            self.command(node, "cluster", "setslot", str(slot), "node", dst)

    def command(self, node: RedisServer, *args: str, timeout: float = 5.0) -> str:
        """One redis-cli command on one node; its output, or "" if the node is down."""
        run = subprocess.run([self.cli, *self.cli_tls, "-h", "127.0.0.1", "-p", str(node.port),
                              *args],
                             capture_output=True, text=True, timeout=timeout)
        return run.stdout if run.returncode == 0 else ""

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.proc is not None
                and n.proc.proc.poll() is None]

    def roles(self) -> dict[int, str]:
        """port -> "master" or "slave", as the live nodes see themselves."""
        roles = {}
        for node in self.live():
            info = self.command(node, "info", "replication")
            for line in info.splitlines():
                if line.startswith("role:"):
                    roles[node.port] = line.split(":", 1)[1].strip()
        return roles

    def masters_now(self) -> list[RedisServer]:
        roles = self.roles()
        return [n for n in self.nodes if roles.get(n.port) == "master"]

    def master_of(self, key: str) -> RedisServer:
        """The live master that serves ``key``'s hash slot now, as a live node sees it."""
        from redis.crc import key_slot  # only the callers that have redis-py ask

        slot = key_slot(key.encode())
        ports = {n.port: n for n in self.nodes}
        for line in self.command(self.live()[0], "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for item in fields[8:]:
                low, _, high = item.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return ports[int(fields[1].split("@")[0].rpartition(":")[2])]
        raise LookupError(f"no live master serves slot {slot} of {key!r}")

    def wait_ok(self, timeout: float = 30.0, *, linked: bool = True) -> None:
        """Until every live node says cluster_state:ok and ``masters`` of them are masters
        (after a crash: until a replica is promoted), and with ``linked`` every live
        replica's link to its master is up (so a failover would lose nothing old)."""
        deadline = time.monotonic() + timeout
        while True:
            live = self.live()
            states = [self.command(n, "cluster", "info") for n in live]
            replication = [self.command(n, "info", "replication") for n in live]
            ok = all("cluster_state:ok" in s for s in states)
            masters = sum("role:master" in r for r in replication)
            synced = not linked or all("master_link_status:up" in r for r in replication
                                       if "role:slave" in r)
            if ok and masters == self.masters and synced:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("redis cluster not ok:\n" + "\n".join(states))
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class EtcdServer:
    """One etcd member (v2 API enabled), or a member of a loopback cluster."""

    def __init__(
        self,
        workdir: Path,
        name: str = "m0",
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = find_binary("etcd", "etcd-server")
        #: More etcd flags, e.g. ``("--max-request-bytes", "4096")``.
        self.extra_args = extra_args
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
            *self.extra_args,
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
