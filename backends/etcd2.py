"""``etcd2://host:2379[,host2:2379,...]``: the etcd v2 keys API (lockd writes locksmith's layout).

This is the store that locksmithd nodes use, so lockd can share one reboot semaphore with
them while a fleet migrates node by node (see docs/migrating-from-locksmith.md). etcd 3.4 and
3.5 serve the v2 API only with ``--enable-v2=true``; etcd 3.6 no longer serves it. The v2 and
v3 stores are separate: a key written through one is invisible to the other.

Wire operations, over one long-lived HTTP session:

- get: ``GET /v2/keys/<key>?quorum=true``; the version is the node's ``modifiedIndex`` with
  its value.
  ``quorum=true`` makes the read linearizable; without it a member could answer from a
  stale copy and lockd would tell a node it still holds a slot that was released.
- create: ``PUT <key>?prevExist=false`` with form field ``value``; errorCode 105 = lost.
- compare-and-set: ``PUT <key>?prevIndex=<index>&prevValue=<value>``; 412 with errorCode
  101 (or 100, key gone) = lost. A write answers the node's new ``modifiedIndex``.
  A lost create or swap then reads the key (the error body names the current index but not
  the value), except errorCode 100, which already says the key is absent.
- compare-and-delete: ``DELETE <key>?prevIndex=<index>&prevValue=<value>``; errorCode 101
  = lost (then read), 100 = already gone.
- scan: ``GET <dir>?recursive=true&quorum=true``, flattened to leaf keys.

Failover (``backends/etcdhttp.py``, shared with ``etcd://``): a connection error, a
timeout, a 5xx or an answer that is not JSON from one endpoint moves to the next one, within
the same call. Every write and delete carries a precondition (prevExist or prevIndex), so
re-sending one whose answer was lost can never apply it twice: at worst it reports a loss,
and the service's next read shows the write it had made.

Change feed (:meth:`Etcd2Backend.watch`): ``GET <dir>?wait=true&recursive=true&waitIndex=N``
in a loop, from the ``X-Etcd-Index`` of a first read plus one, each answer's
``modifiedIndex`` plus one after it: no event is skipped between two waits. A long poll
that sees nothing for ``FEED_WAIT`` seconds is sent again with the same index. etcd keeps
the last 1000 events; a waitIndex older than that (errorCode 401) raises, and the caller
watches again from a fresh read.

URL options: ``root=/path`` puts every key under that directory (tests use it to keep apart
on one etcd; locksmith itself has no such option, so leave it unset to share with locksmith),
``timeout_s=3`` bounds each HTTP request to one endpoint.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp

from .base import (
    Backend,
    BackendUnavailable,
    CasResult,
    ChangeSink,
    InvalidBackendURL,
    ValueTooLarge,
    Version,
)
from .etcdhttp import MemberFailed, Members
from .urls import Options

KEYS_PREFIX = "/v2/keys"
# etcd v2 error codes (etcd/error/error.go).
KEY_NOT_FOUND = 100
TEST_FAILED = 101
NODE_EXIST = 105
LOST = {KEY_NOT_FOUND, TEST_FAILED, NODE_EXIST}
EVENT_INDEX_CLEARED = 401
#: Seconds a watch's long poll waits before it is sent again (same index: nothing lost).
FEED_WAIT = 30.0


class Etcd2Backend(Backend):
    scheme = "etcd2"
    has_feed = True

    def __init__(
        self,
        endpoints: list[str],
        *,
        root: str = "",
        timeout: float = 3.0,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd2 needs at least one endpoint")
        self.endpoints = endpoints
        self.root = "/" + root.strip("/") if root.strip("/") else ""
        self.timeout = timeout
        self.members = Members(endpoints, timeout=timeout, what="etcd v2")

    async def open(self) -> None:
        await self.members.open()

    async def close(self) -> None:
        await self.members.close()

    def describe(self) -> str:
        root = f", root {self.root}" if self.root else ""
        return f"etcd2://{','.join(self.endpoints)} (etcd v2 keys API{root})"

    # Paths

    def _path(self, key: str) -> str:
        """The escaped URL path of a key: a ``%`` in the key travels as ``%25``."""
        return KEYS_PREFIX + quote(f"{self.root}/{key.lstrip('/')}", safe="/")

    def _strip_root(self, etcd_key: str) -> str | None:
        head = self.root + "/"
        if not etcd_key.startswith(head):
            return None
        return etcd_key[len(head) :]

    # HTTP with failover (etcdhttp.Members)

    async def _request(
        self,
        method: str,
        key: str,
        params: dict[str, str],
        form: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Send to the current member, moving on after a failure; (status, JSON body)."""
        path = f"{self._path(key)}?{urlencode(params)}"

        async def attempt(member: int) -> tuple[int, dict[str, Any]]:
            status, body = await self.members.send(member, method, path, data=form)
            if status in (413, 431):
                # The expected value travels in the URL (prevValue), and etcd's HTTP server
                # takes at most 1 MiB of request line and headers: a group this large can
                # only be refused, by every member alike.
                raise ValueTooLarge(f"etcd v2 refused the request as too large: HTTP {status}")
            try:
                doc = json.loads(body)
            except ValueError as exc:
                # etcd 3.4/3.5 without --enable-v2=true (or 3.6+) answers a plain 404.
                hint = " (is the v2 API enabled: --enable-v2=true?)" if status == 404 else ""
                raise MemberFailed(f"HTTP {status}, not JSON{hint}: {body[:120]!r}") from exc
            if not isinstance(doc, dict):
                raise MemberFailed(f"HTTP {status}, unexpected body: {body[:200]!r}")
            return status, doc

        return await self.members.call(attempt)

    @staticmethod
    def _fail(status: int, doc: dict[str, Any], what: str) -> BackendUnavailable:
        # Anything else (not a file, not a dir, root read-only, v2 disabled...) is a store
        # lockd cannot use as it stands; the operator must look, so say exactly what.
        return BackendUnavailable(
            f"etcd v2 {what}: HTTP {status} errorCode {doc.get('errorCode')} "
            f"{doc.get('message', '')} {doc.get('cause', '')}".rstrip()
        )

    # The backend contract

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        status, doc = await self._request("GET", key, {"quorum": "true"})
        if status == 404 and doc.get("errorCode") == KEY_NOT_FOUND:
            return None, None
        node = doc.get("node")
        if status != 200 or not isinstance(node, dict):
            raise self._fail(status, doc, f"get {key}")
        if node.get("dir"):
            raise BackendUnavailable(f"etcd v2 key {key} is a directory, not a semaphore")
        text = str(node.get("value", ""))
        return text.encode(), (int(node["modifiedIndex"]), text)

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        # A version is (modifiedIndex, value) and the swap compares both: an etcd restored
        # from a backup repeats indexes, but never an index with a value this process did
        # not see. locksmith itself compares the index alone; both agree on every write.
        if expected is None:
            params = {"prevExist": "false"}
        else:
            index, seen = expected
            params = {"prevIndex": str(index)}
            if seen:  # etcd refuses an empty prevValue; the index alone must do there
                params["prevValue"] = seen
        # v2 values are text; every layout writes UTF-8 JSON.
        text = value.decode()
        status, doc = await self._request("PUT", key, params, {"value": text})
        node = doc.get("node")
        if status in (200, 201) and isinstance(node, dict) and "modifiedIndex" in node:
            # The write's own index: what a get would now return as the version.
            return CasResult(True, value, (int(node["modifiedIndex"]), text))
        code = doc.get("errorCode")
        if code == KEY_NOT_FOUND:
            # The compare ran in the raft log, so the key was absent at that point.
            return CasResult(False, None, None)
        if code in LOST:
            # The error carries the current index in "cause" but not the value: read both.
            return CasResult(False, *await self.get(key))
        raise self._fail(status, doc, f"put {key}")

    async def compare_and_delete(self, key: str, expected: Version) -> CasResult:
        # v2's compare-and-delete takes the same preconditions as the swap: the index and
        # the value together, so a restored etcd repeating an index cannot match.
        if expected is None:
            raise ValueError("compare_and_delete needs the version of the value to delete")
        index, seen = expected
        params = {"prevIndex": str(index)}
        if seen:  # etcd refuses an empty prevValue; the index alone must do there
            params["prevValue"] = seen
        status, doc = await self._request("DELETE", key, params)
        if status == 200 and isinstance(doc.get("node"), dict):
            return CasResult(True, None, None)
        code = doc.get("errorCode")
        if code == KEY_NOT_FOUND:
            return CasResult(False, None, None)
        if code == TEST_FAILED:
            return CasResult(False, *await self.get(key))
        raise self._fail(status, doc, f"delete {key}")

    async def scan(self, prefix: str) -> list[str]:
        # v2 lists directories, not name prefixes: list the directory holding the prefix
        # and keep the leaves that start with it.
        directory = prefix.lstrip("/").rpartition("/")[0]
        status, doc = await self._request("GET", directory, {"recursive": "true", "quorum": "true"})
        if status == 404 and doc.get("errorCode") == KEY_NOT_FOUND:
            return []
        node = doc.get("node")
        if status != 200 or not isinstance(node, dict):
            raise self._fail(status, doc, f"list {directory}")
        keys = []
        for etcd_key in _leaves(node):
            key = self._strip_root(etcd_key)
            if key is not None and key.startswith(prefix.lstrip("/")):
                keys.append(key)
        return sorted(keys)

    async def watch(self, prefix: str, sink: ChangeSink) -> None:
        # v2 watches directories: the one holding the prefix, as scan lists it.
        directory = prefix.lstrip("/").rpartition("/")[0]
        path = self._path(directory)
        members = self.members
        member = members.current
        try:
            # Where to start: the store's index now (any read answers it in X-Etcd-Index).
            async with members.stream(member, "GET", f"{path}?quorum=true") as resp:
                await resp.read()
                index = int(resp.headers["X-Etcd-Index"])
            sink.subscribed()
            while True:
                query = urlencode({"wait": "true", "recursive": "true",
                                   "waitIndex": str(index + 1)})
                try:
                    async with members.stream(member, "GET", f"{path}?{query}",
                                              read_timeout=FEED_WAIT) as resp:
                        body = await resp.read()
                except TimeoutError:
                    continue  # nothing happened: wait again from the same index
                doc = json.loads(body) if body else {}
                if not isinstance(doc, dict):
                    raise BackendUnavailable(f"etcd v2 watch: unexpected {body[:120]!r}")
                if doc.get("errorCode") == EVENT_INDEX_CLEARED:
                    raise BackendUnavailable("etcd v2 watch: missed events (index cleared)")
                node = doc.get("node")
                if resp.status != 200 or not isinstance(node, dict):
                    raise self._fail(resp.status, doc, f"watch {directory}")
                index = int(node["modifiedIndex"])
                key = self._strip_root(str(node.get("key", "")))
                if key is None or not key.startswith(prefix.lstrip("/")):
                    continue
                if doc.get("action") in ("delete", "expire", "compareAndDelete") \
                        or node.get("dir"):
                    sink.changed(key)
                else:
                    sink.changed(key, (index, str(node.get("value", ""))))
        except (OSError, TimeoutError, ValueError, KeyError, aiohttp.ClientError) as exc:
            raise BackendUnavailable(f"etcd v2 change feed: {exc or type(exc).__name__}") \
                from exc


def _leaves(node: dict[str, Any]) -> list[str]:
    if not node.get("dir"):
        return [str(node.get("key", ""))]
    out: list[str] = []
    for child in node.get("nodes") or ():
        if isinstance(child, dict):
            out.extend(_leaves(child))
    return out


def from_url(url: str) -> Etcd2Backend:
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise InvalidBackendURL(
            "etcd2 URL carries credentials; etcd v2 authentication is not supported by lockd"
        )
    if parts.path not in ("", "/"):
        raise InvalidBackendURL(
            f"etcd2 URL {url!r} has a path; write etcd2://host:2379[,host2:2379][?root=/dir]"
        )
    endpoints = [e.strip() for e in parts.netloc.split(",") if e.strip()]
    if not endpoints:
        raise InvalidBackendURL(f"etcd2 URL {url!r} names no endpoint; write etcd2://host:2379")
    for e in endpoints:
        host, sep, port = e.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InvalidBackendURL(f"etcd2 endpoint {e!r} must be host:port")
    options = Options("etcd2", parts.query)
    root = options.text("root")
    timeout = options.seconds("timeout_s", 3.0)
    options.finish()
    return Etcd2Backend(endpoints, root=root, timeout=timeout)
