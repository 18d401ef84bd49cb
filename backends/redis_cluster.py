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

URL options: ``prefix``, ``timeout``, ``connect_timeout``, ``max_connections`` (per node
here), ``wait_replicas`` and, on ``rediss+cluster://``, the ``ssl_*`` options, all as in
:mod:`.redis`. ``wait_replicas=N`` sends WAIT on the same connection, to the master that
ran the command, after each script and each read.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, ClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import Backend, BackendUnavailable
from .redis import NO_CAP, RedisBackend, RedisOptions, _invalid, common_options, credentials, hosts
from .urls import Options


class RedisClusterBackend(RedisBackend):
    scheme = "redis+cluster"
    #: No change feed: tracking is per node, and a group's slot moves between masters on
    #: a failover or a resharding, so a view could miss changes unseen. Every refusal
    #: reads the store.
    has_feed = False
    label = "redis cluster"
    # No sorted-set index for scan: a script may only touch keys of one slot, and each
    # group is its own slot (its hash tag), so an index beside it could not change in the
    # same step as the key. Listing SCANs every master instead (docs/redis.md says what
    # that costs); every single-group operation stays one slot, one script.
    indexed = False
    watch = Backend.watch  # not RedisBackend's: NotImplementedError
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
