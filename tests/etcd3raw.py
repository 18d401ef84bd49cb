"""A bare etcd v3 client for tests: etcd's JSON gateway over aiohttp, nothing of lockd.

Tests use it to look at keys and to move them behind lockd's back (another writer, airlock
on the wire, an operator enabling auth). It shares no code with ``lockd.backends.etcd3``,
so a mistake there cannot hide itself here.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


class EtcdError(Exception):
    def __init__(self, status: int, doc: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {doc.get('message') or doc}")
        self.status = status
        self.doc = doc


class RawEtcd:
    """``async with RawEtcd("127.0.0.1:2379") as etcd: await etcd.put(b"k", b"v")``."""

    def __init__(
        self, endpoint: str, *, token: str | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.base = f"{'https' if ssl_context else 'http'}://{endpoint}"
        self.token = token
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10),
            connector=aiohttp.TCPConnector(ssl=ssl_context if ssl_context else True),
        )

    async def __aenter__(self) -> RawEtcd:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": self.token} if self.token else {}
        async with self._session.post(self.base + path, json=body, headers=headers) as resp:
            doc = await resp.json(content_type=None)
            if resp.status != 200:
                raise EtcdError(resp.status, doc)
            return doc

    async def get(self, key: bytes) -> KV | None:
        kvs = (await self.call("/v3/kv/range", {"key": b64(key)})).get("kvs")
        return kv_of(kvs[0]) if kvs else None

    async def put(self, key: bytes, value: bytes) -> int:
        """The revision of the write."""
        doc = await self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})
        return int(doc["header"]["revision"])

    async def delete(self, key: bytes) -> int:
        doc = await self.call("/v3/kv/deleterange", {"key": b64(key)})
        return int(doc.get("deleted", 0))

    async def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return await self.call(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []}
        )

    async def enable_auth(self, user: str, password: str) -> None:
        """A root user with the root role, and auth on (as ``etcdctl auth enable``)."""
        await self.call("/v3/auth/user/add", {"name": user, "password": password})
        await self.call("/v3/auth/role/add", {"name": "root"})
        await self.call("/v3/auth/user/grant", {"user": user, "role": "root"})
        await self.call("/v3/auth/enable", {})


def kv_of(doc: dict[str, Any]) -> KV:
    # The gateway leaves out fields that are zero (and a value that is empty).
    return KV(
        key=unb64(doc.get("key")),
        value=unb64(doc.get("value")),
        create_revision=int(doc.get("create_revision", 0)),
        mod_revision=int(doc.get("mod_revision", 0)),
        version=int(doc.get("version", 0)),
    )


def put_op(key: bytes, value: bytes) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def compare(key: bytes, target: str, value: int | bytes) -> dict[str, Any]:
    """``key``'s ``target`` (VERSION, CREATE, MOD or VALUE) equals ``value``."""
    field = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision",
             "VALUE": "value"}[target]
    wire = b64(value) if isinstance(value, bytes) else str(value)
    return {"key": b64(key), "target": target, "result": "EQUAL", field: wire}
