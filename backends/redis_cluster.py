"""Redis Cluster: ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for TLS).

The Redis backend (:mod:`.redis`) on redis-py's asyncio cluster client: the same hash per
group (``value``, ``ver``), the same Lua compare-and-set, the same errors-become-503 rule.
A group is one key, ``<prefix>{<layout key>}``; the braces make the layout key the hash
tag, so a group lives in one slot on one master and the script never crosses slots. The
client routes each command to the master that serves the key's slot and follows MOVED
redirects; each master has its own script cache, so EVALSHA may answer NOSCRIPT on one
master (a promoted replica, a restarted node) and not on another, and the EVAL fallback
runs on the node that refused.

The URL names startup nodes: any one that answers tells the client the whole cluster
(``CLUSTER SLOTS``); list several so that one down node does not stop a start. Redis Cluster
has only database 0, no Unix sockets, and no Sentinel.

:meth:`RedisClusterBackend.open` learns the topology before lockd serves: redis-py 8.1's
async cluster client, used fresh by many requests at once, can fail some of the first
calls (a connection it is still setting up is reset under them). A cluster that cannot be
reached at start-up is no error: the topology is then learned by the first call (one at
a time), and until then every call answers 503.

The change feed (:meth:`RedisClusterBackend.watch`) is the Redis one on every master, with
the topology checked: a failover, a resharding or a new master ends it and the view
forgets everything (docs/redis.md, "On Redis Cluster", says what the time until the next
check leaves open).

URL options: ``prefix``, ``timeout``, ``connect_timeout``, ``max_connections`` (per node
here), ``wait_replicas`` and, on ``rediss+cluster://``, the ``ssl_*`` options, all as in
:mod:`.redis`. ``wait_replicas=N`` sends WAIT on the same connection, to the master that
ran the command, after each script and each read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from redis._parsers.helpers import parse_cluster_nodes
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.exceptions import AskError, ClusterDownError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import BackendUnavailable, ChangeSink
from .redis import (
    NO_CAP,
    RedisBackend,
    RedisOptions,
    _invalid,
    _text,
    common_options,
    connect,
    credentials,
    hosts,
    raise_if_cancelled,
    resp2_connection,
)
from .urls import Options


class RedisClusterBackend(RedisBackend):
    scheme = "redis+cluster"
    #: The change feed follows every master (see :meth:`watch`).
    has_feed = True
    label = "redis cluster"
    # No sorted-set index for scan: a script may only touch keys of one slot, and each
    # group is its own slot (its hash tag), so an index beside it could not change in the
    # same step as the key. Listing SCANs every master instead (docs/redis.md says what
    # that costs); every single-group operation stays one slot, one script.
    indexed = False
    #: Seconds between two checks of the topology while the feed runs (``watch``).
    topology_poll_s = 0.25
    # Any exception at all: redis-py 8.1's cluster client, when it learns the topology
    # again (a first use, a failover, CLUSTERDOWN), disconnects connections that other
    # calls are still using, and those calls fail with whatever the transport raises
    # ("'NoneType' object has no attribute 'writelines'", uvloop's "unable to perform
    # operation on <TCPTransport closed=True>"), besides RedisClusterException (no node
    # reachable, slots not covered), which is not a RedisError either. Such a command may
    # or may not have run, which is what 503 says; a 500 would call it lockd's bug.
    errors = (Exception,)

    def __init__(self, options: RedisOptions) -> None:
        super().__init__(options)
        self._client: RedisCluster | None = None  # type: ignore[assignment]
        self._initialized = False
        self._opening = asyncio.Lock()

    def _new_client(self) -> RedisCluster:
        o = self.options
        kwargs: dict[str, Any] = {
            "socket_timeout": o.timeout,
            "socket_connect_timeout": o.connect_timeout,
            # On a broken connection the client learns the topology again and retries
            # once, at once: after a failover that reaches the promoted replica.
            "retry": Retry(NoBackoff(), 1),
            "max_connections": o.max_connections or NO_CAP,
            "username": o.username,
            "password": o.password,
        }
        if o.scheme == "rediss+cluster":
            kwargs["ssl"] = True
            kwargs.update(o.tls)
        nodes = [ClusterNode(host, port) for host, port in o.cluster_nodes]
        return RedisCluster(startup_nodes=nodes, **kwargs)

    async def open(self) -> None:
        """Learn the cluster's topology now, so that no request meets a fresh client."""
        try:
            await self._call(_nothing)
        except BackendUnavailable:
            pass  # not reachable yet: the first call tries again (see _ready_client)

    async def _ready_client(self) -> RedisCluster:
        if self._initialized:
            assert self._client is not None
            return self._client
        async with self._opening:  # one topology discovery at a time, others wait
            if self._client is None:
                self._client = self._new_client()
            if not self._initialized:
                await self._client.initialize()
                self._initialized = True
        return self._client

    async def close(self) -> None:
        async with self._opening:
            client, self._client = self._client, None
            self._initialized = False
        if client is not None:
            await client.aclose()

    async def _then_wait(self, client: RedisCluster, *command: Any) -> Any:
        """``command`` then ``WAIT``, pipelined on one connection to the key's master.

        WAIT counts the replicas of the node it runs on that have the writes of its own
        connection, so it must follow the command down the same connection. The pair goes
        to the node itself, not through the client's cluster pipeline, which would resend
        the command elsewhere after a redirect (and WAIT here), and after a broken
        connection close every connection of the client, other requests' too. A redirect
        or a broken connection instead answers 503 after learning the topology again.
        """
        wanted = self.options.wait_replicas
        wait_ms = max(1, int(self.options.timeout * 500))
        key = command[3] if command[0] in ("EVAL", "EVALSHA") else command[1]
        node = client.get_node_from_key(key)
        pair = [PipelineCommand(0, *command), PipelineCommand(1, "WAIT", wanted, wait_ms)]
        try:
            await node.execute_pipeline(pair)
        except (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError):
            await client.nodes_manager.initialize()
            raise
        result, acked = pair[0].result, pair[1].result
        if isinstance(result, (AskError, ClusterDownError)):  # MOVED too: a failover
            await client.nodes_manager.initialize()
        for item in (result, acked):
            if isinstance(item, Exception):
                raise item
        if int(acked) < wanted:
            raise BackendUnavailable(
                f"{self.label} {self.options.where}: {acked} of {wanted} replicas of "
                f"{node.name} confirmed within {wait_ms} ms"
            )
        return result

    # The change feed

    async def watch(self, prefix: str, sink: ChangeSink) -> None:
        """Follow every master: client-side caching's invalidations are per node.

        One RESP2 connection per master, each tracking the prefix in broadcast mode and
        subscribed to its own invalidations exactly as on one Redis (``track``, ``relay``),
        and one plain connection per master that asks it for ``CLUSTER NODES`` every
        ``topology_poll_s`` seconds. The set of masters and the slots each serves (the
        topology) is read before subscribing, and must give every slot a live master (not
        so between a master's failure and its replica's promotion); ``subscribed`` is
        reported only once every
        master is tracked and every master still describes that same topology, so no slot
        is on a master that is not followed at that moment. Afterwards any change of it (a
        failover, a master gone or added, a slot moved) or any failed connection ends the
        feed with BackendUnavailable: the view forgets everything, and the next watch
        reads the new topology and subscribes to the masters it names (a promoted replica
        has none of its old master's tracking state, so it must be subscribed anew).
        """
        where = f"{self.label} {self.options.where} change feed"
        conns: list[Any] = []
        async with self.feed_errors(where):
            client = await self._ready_client()
            try:
                async with asyncio.timeout(self.feed_setup_timeout):
                    topology = await self._read_topology(client, conns)
                    if topology.covered() < REDIS_CLUSTER_HASH_SLOTS:
                        # A master failed and no replica promoted yet: its slots' next
                        # master is unknown, so nothing could be trusted of them.
                        raise BackendUnavailable(
                            f"{where}: {topology.covered()} of {REDIS_CLUSTER_HASH_SLOTS} "
                            "slots have a live master; waiting for the cluster")
                    feeds, probes = [], []
                    for node_id, (host, port) in sorted(topology.masters.items()):
                        feed = self._node_connection(client, host, port)
                        probe = self._node_connection(client, host, port)
                        conns += [feed, probe]
                        await connect(feed)
                        await connect(probe)
                        await feed.send_command("CLUSTER", "MYID")
                        if _text(await feed.read_response()) != node_id:
                            raise BackendUnavailable(
                                f"{where}: {host}:{port} is no longer node {node_id}")
                        await self.track(feed, prefix, f"{where} on {host}:{port}")
                        feeds.append((feed, f"{where} on {host}:{port}"))
                        probes.append((probe, f"{where} on {host}:{port}"))
                    for probe, at in probes:
                        await self._same_topology(probe, topology, at)
                raise_if_cancelled()
                sink.subscribed()
                await _first_failure(
                    *(self.relay(feed, sink, at) for feed, at in feeds),
                    *(self._poll_topology(probe, topology, at) for probe, at in probes),
                )
            finally:
                for conn in conns:
                    await conn.disconnect()

    def _node_connection(self, client: RedisCluster, host: str, port: int) -> Any:
        """A feed's own RESP2 connection to one node, with the client's settings (TLS,
        credentials, timeouts)."""
        node = ClusterNode(host, port, **client.connection_kwargs)
        return resp2_connection(node.connection_class, node.connection_kwargs)

    async def _read_topology(self, client: RedisCluster, conns: list[Any]) -> Topology:
        """The topology as the first node that answers describes it: the nodes the client
        knows, then the URL's."""
        known = [(n.host, int(n.port)) for n in client.get_nodes()]
        failures = []
        for host, port in dict.fromkeys([*known, *self.options.cluster_nodes]):
            conn = self._node_connection(client, host, port)
            conns.append(conn)
            try:
                await connect(conn)
                await conn.send_command("CLUSTER", "NODES")
                return Topology.parse(_text(await conn.read_response()), host)
            except (OSError, RedisError) as exc:
                failures.append(f"{host}:{port}: {exc or type(exc).__name__}")
        raise BackendUnavailable("no node describes the cluster (" + "; ".join(failures) + ")")

    async def _same_topology(self, probe: Any, topology: Topology, where: str) -> None:
        await probe.send_command("CLUSTER", "NODES")
        now = Topology.parse(_text(await probe.read_response()), probe.host)
        if now != topology:
            raise BackendUnavailable(f"{where}: the cluster's topology changed "
                                     f"({topology.describe()} -> {now.describe()})")

    async def _poll_topology(self, probe: Any, topology: Topology, where: str) -> NoReturn:
        while True:
            await asyncio.sleep(self.topology_poll_s)
            await self._same_topology(probe, topology, where)

    async def _scan_keys(self, client: RedisCluster, pattern: str) -> list[bytes]:
        # SCAN runs on every master, each with its own cursor.
        return [k async for k in client.scan_iter(match=pattern, count=1000)]

    async def ping(self) -> None:
        # Ready means every master answers: a group on a master that does not waits.
        await self._call(lambda c: c.ping(target_nodes=RedisCluster.PRIMARIES))

    def describe(self) -> str:
        o = self.options
        return (
            f"{o.scheme}://{o.where} (Redis Cluster, {len(o.cluster_nodes)} startup "
            f"node(s), prefix {o.prefix!r}, timeout {o.timeout:g}s; durability is "
            "Redis's own: see docs/redis.md)"
        )


@dataclass(frozen=True)
class Topology:
    """Which masters there are (id -> host, port) and the slots each serves, as one node's
    ``CLUSTER NODES`` says. A master marked failed (``fail``), without an address or still
    in a handshake is left out; so are a node's own ``myself`` flag, ping times, link
    states and the migrating/importing marks of a slot being moved (only its two nodes
    show them), so that every node of a settled cluster describes the same topology. A
    master without slots is followed too: during a resharding it receives keys (ASK
    redirects) before it owns their slot."""

    masters: dict[str, tuple[str, int]]
    slots: frozenset[tuple[str, str]]  # (node id, "low-high" or "slot")

    @classmethod
    def parse(cls, text: str, asked: str) -> Topology:
        """``asked``: the host the answer came from; a node that has not yet learned its own
        address shows it empty in its own line."""
        masters: dict[str, tuple[str, int]] = {}
        slots: set[tuple[str, str]] = set()
        # redis-py's own parser of the reply (what its cluster_nodes() answers with).
        for address, node in parse_cluster_nodes(text).items():
            flags = set(node["flags"].split(","))
            if "master" not in flags or flags & {"fail", "noaddr", "handshake"}:
                continue
            host, _, port = address.split(",")[0].rpartition(":")
            if not port.isdigit():
                continue
            node_id = node["node_id"]
            masters[node_id] = (host.strip("[]") or asked, int(port))
            slots.update((node_id, "-".join(r)) for r in node["slots"])  # not migrations
        return cls(masters, frozenset(slots))

    def covered(self) -> int:
        """How many of the hash slots a master in this topology serves."""
        count = 0
        for _, item in self.slots:
            low, _, high = item.partition("-")
            count += int(high or low) - int(low) + 1
        return count

    def describe(self) -> str:
        return f"{len(self.masters)} master(s): " + ", ".join(
            f"{h}:{p}" for h, p in sorted(self.masters.values()))


async def _first_failure(*tasks: Coroutine[Any, Any, NoReturn]) -> NoReturn:
    """Run the coroutines, none of which returns, until the first fails; cancel the rest
    and raise its error. Not asyncio.TaskGroup: it would raise an ExceptionGroup, and
    ``follow`` (lockd/view.py) expects the feed's own BackendUnavailable."""
    running = [asyncio.ensure_future(t) for t in tasks]
    try:
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_EXCEPTION)
        failed = next(t for t in done if t.exception() is not None)
        raise failed.exception()  # type: ignore[misc]
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _nothing(client: RedisCluster) -> None:
    """A call that only needs the client ready (its topology known)."""


def from_url(url: str) -> RedisClusterBackend:
    """Parse and check a Redis Cluster URL; nothing connects until the backend is opened."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = Options(scheme, parts.query)
    if options.has("db"):
        raise _invalid(f"{scheme} URL option db: Redis Cluster has only database 0")
    common = common_options(options, "rediss+cluster")
    options.finish()
    if parts.path.strip("/") not in ("", "0"):
        raise _invalid(f"{scheme} URL {url!r}: Redis Cluster has only database 0; "
                       f"write {scheme}://host:port[,host:port...]")
    if not parts.netloc.rpartition("@")[2]:
        raise _invalid(f"{scheme} URL {url!r} names no node: write "
                       f"{scheme}://host:6379[,host:6379...]")
    nodes = hosts(parts.netloc, url, scheme, 6379)
    where = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in nodes)
    return RedisClusterBackend(RedisOptions(
        url="", cluster_nodes=nodes, where=where, **credentials(parts), **common))
