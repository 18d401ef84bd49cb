"""A locksmith node, on the wire: the exact etcd v2 requests flatcar/locksmith sends.

locksmith (``lock/etcd.go``, ``lock/lock.go``, ``lock/semaphore.go``, with the etcd v2 Go
client's ``keys.go``) does, for every operation:

1. ``PUT /v2/keys/<key>?prevExist=false`` with the form body ``value=<json>`` of a new
   semaphore ``{"semaphore":1,"max":1,"holders":null}``; errorCode 105 (exists) is ignored.
2. ``GET /v2/keys/<key>?quorum=false&recursive=false&sorted=false``; the node's
   ``modifiedIndex`` is remembered.
3. The change on the decoded semaphore (lock / unlock / set-max), then
   ``PUT /v2/keys/<key>?prevIndex=<modifiedIndex>`` with ``value=<json>``. A lost race is an
   error (412, errorCode 101); locksmithd tries again at its next tick, not here.

The key is ``coreos.com/updateengine/rebootlock/semaphore`` for the default group ``""`` and
``.../groups/<QueryEscape(group)>/semaphore`` otherwise; the Go client escapes the path once
more when it builds the URL, so a ``%`` travels as ``%25``.

This is test code that plays locksmith; lockd never imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, urlencode

import aiohttp
from yarl import URL

KEY_PREFIX = "coreos.com/updateengine/rebootlock"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class LocksmithError(Exception):
    """What locksmith's Go code would return as an error."""


def semaphore_key(group: str) -> str:
    if not group:
        return f"{KEY_PREFIX}/semaphore"
    return f"{KEY_PREFIX}/groups/{quote_plus(group)}/semaphore"


def go_json(value: object) -> str:
    """``encoding/json.Marshal``: compact, with <, >, & and U+2028/9 escaped as Go does."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


@dataclass
class LocksmithSemaphore:
    """locksmith's ``lock.Semaphore``: only these three fields survive its read-write."""

    semaphore: int
    max: int
    holders: list[str] | None
    index: int = 0

    def to_json(self) -> str:
        return go_json({"semaphore": self.semaphore, "max": self.max, "holders": self.holders})

    # The transitions, as lock/semaphore.go has them.

    def lock(self, id: str) -> None:
        if self.semaphore <= 0:
            raise LocksmithError(f"semaphore is at {self.semaphore}")
        holders = self.holders or []
        if id in holders:
            raise LocksmithError("holder exists")
        self.holders = sorted([*holders, id])
        self.semaphore -= 1

    def unlock(self, id: str) -> None:
        if self.holders is None or id not in self.holders:
            raise LocksmithError("holder does not exist")
        # Go's append(s[:i], s[i+1:]...) leaves an empty, non-nil slice: JSON [].
        self.holders = [h for h in self.holders if h != id]
        self.semaphore += 1

    def set_max(self, new_max: int) -> None:
        diff = self.max - new_max
        self.semaphore -= diff
        self.max -= diff


class LocksmithClient:
    """One locksmithd (or locksmithctl) talking to one etcd endpoint."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: str, group: str = "") -> None:
        self.session = session
        self.endpoint = endpoint
        self.group = group
        self.key = semaphore_key(group)

    def _url(self, params: dict[str, str]) -> URL:
        # Go's URL.EscapedPath: the key is escaped once more, so "%" becomes "%25".
        path = quote(f"/v2/keys/{self.key}", safe="/$&+,:;=@")
        query = urlencode(sorted(params.items()))  # url.Values.Encode sorts by key
        return URL(f"http://{self.endpoint}{path}?{query}", encoded=True)

    async def _put(self, params: dict[str, str], value: str) -> tuple[int, dict]:
        body = urlencode({"value": value})
        async with self.session.put(self._url(params), data=body.encode(), headers=FORM) as r:
            return r.status, await r.json(content_type=None)

    async def init(self) -> None:
        """``EtcdLockClient.Init``: create the default semaphore unless it exists."""
        first = LocksmithSemaphore(semaphore=1, max=1, holders=None)
        status, doc = await self._put({"prevExist": "false"}, first.to_json())
        if status not in (200, 201) and doc.get("errorCode") != 105:
            raise LocksmithError(f"init: {status} {doc}")

    async def get(self) -> LocksmithSemaphore:
        params = {"quorum": "false", "recursive": "false", "sorted": "false"}
        async with self.session.get(self._url(params)) as r:
            status, doc = r.status, await r.json(content_type=None)
        if status != 200:
            raise LocksmithError(f"get: {status} {doc}")
        node = doc["node"]
        # Go's json.Unmarshal: unknown fields ignored, missing ones zero.
        value = json.loads(node["value"])
        return LocksmithSemaphore(
            semaphore=value.get("semaphore", 0),
            max=value.get("max", 0),
            holders=value.get("holders"),
            index=node["modifiedIndex"],
        )

    async def set(self, sem: LocksmithSemaphore) -> None:
        status, doc = await self._put({"prevIndex": str(sem.index)}, sem.to_json())
        if status not in (200, 201):
            raise LocksmithError(f"set: {status} errorCode {doc.get('errorCode')}")

    async def _store(self, change: str, *args: object) -> LocksmithSemaphore:
        """``Lock.store``: Init (as NewEtcdLockClient does), Get, change, Set."""
        await self.init()
        sem = await self.get()
        getattr(sem, change)(*args)
        await self.set(sem)
        return sem

    async def lock(self, id: str) -> None:
        await self._store("lock", id)

    async def unlock(self, id: str) -> None:
        await self._store("unlock", id)

    async def set_max(self, new_max: int) -> int:
        """``locksmithctl set-max``; returns the old max."""
        await self.init()
        sem = await self.get()
        old = sem.max
        sem.set_max(new_max)
        await self.set(sem)
        return old

    async def status(self) -> str:
        """What ``locksmithctl status`` prints."""
        await self.init()
        sem = await self.get()
        lines = [f"Available: {sem.semaphore}", f"Max: {sem.max}"]
        if sem.holders:
            lines += ["", "MACHINE ID", *sem.holders]
        return "\n".join(lines) + "\n"

    async def raw(self) -> tuple[str, int]:
        """The stored value, byte for byte, and its modifiedIndex."""
        params = {"quorum": "false", "recursive": "false", "sorted": "false"}
        async with self.session.get(self._url(params)) as r:
            doc = await r.json(content_type=None)
        return doc["node"]["value"], doc["node"]["modifiedIndex"]

    async def write_raw(self, value: str) -> None:
        """Put any value unconditionally, as an operator with etcdctl would."""
        async with self.session.put(
            self._url({}), data=urlencode({"value": value}).encode(), headers=FORM
        ) as r:
            if r.status not in (200, 201):
                raise LocksmithError(f"write: {r.status} {await r.text()}")
