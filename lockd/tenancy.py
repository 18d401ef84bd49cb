"""Public mode: turning a request into a tenant, and a tenant's group into a store key.

A tenant is a capability: whoever knows its secret is the tenant. The secret reaches lockd
by one of three carriers (docs/public.md):

- a token in the base URL path: ``POST /t/<token>/v1/pre-reboot`` (and ``//v1``);
- a token as the Basic-auth user name: ``https://<token>@lock.example/`` makes zincati send
  ``Authorization: Basic base64(<token>:)``;
- a secret group name at the root, ``POST /v1/...`` with ``"group": "<secret>"``: the same
  tenant as the token ``<secret>`` with its group ``default``. zincati also sends its group
  to the OS update server, so this carrier is the weakest.

Every secret must carry about 128 bits: at least :data:`MIN_SECRET_LENGTH` characters of
``[A-Za-z0-9]``, or a token from :func:`new_token` (``lockd_`` + random + checksum, so that a
mistyped token is refused before any lookup). Every refused secret gets the same answer.

Nothing here is stored or logged in clear. A group of a tenant is the service group
``<tenant hash>.<group hash>`` (two HMAC-SHA256 digests under the server's pepper, cut to
128 bits each), a valid ordinary group name: the service, the model and the layouts never
learn that tenants exist. :class:`TenantLayout` keeps those groups under their own key
prefix, apart from a self-hosted deployment's groups.

Idle groups are garbage-collected (:meth:`Public.collect`): a group with no holder whose
idle clock (the document's ``touched``, written coarsely by the tenant service) is older
than ``[public] delete_idle_after`` is deleted with its sealed name, by a conditional delete
on the very version that showed it idle, so a grant made meanwhile always survives.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import math
import random
import re
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from aiohttp import web

from lockd.backends import Backend, BackendUnavailable
from lockd.errors import Kind, LockdError
from lockd.layouts import LayoutError
from lockd.layouts.native import NativeLayout
from lockd.ratelimit import Limits
from lockd.service import Decision, LockService, every, stop

log = logging.getLogger("lockd.tenancy")
T = TypeVar("T")

TOKEN_PREFIX = "lockd_"
MIN_SECRET_LENGTH = 22  # 22 base62 characters: 131 bits
MAX_SECRET_LENGTH = 128
TOKEN_RANDOM_LENGTH = 32  # 190 bits
CHECKSUM_LENGTH = 6  # base62 of a CRC32: 62**6 > 2**32
#: Bytes of pepper the server needs, at the least.
MIN_PEPPER_BYTES = 32
#: Hex digits kept of each HMAC in a service group name (128 bits).
HASH_HEX = 32
#: Hex digits of the tenant hash that logs show.
LOG_HEX = 8

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SECRET_RE = re.compile(rf"[A-Za-z0-9]{{{MIN_SECRET_LENGTH},{MAX_SECRET_LENGTH}}}")
#: The group a root (secret group name) carrier uses inside its tenant.
ROOT_GROUP = "default"

#: The one answer to every refused secret, whatever was wrong with it.
REFUSED_VALUE = (
    "this is a public lock server: put a tenant token in base_url "
    "(https://<host>/t/<token>/ or https://<token>@<host>/; `lockd new-token` makes one), "
    f"or use a secret group name of at least {MIN_SECRET_LENGTH} letters and digits"
)
#: What a path of /t/v1/... means: zincati joined a base_url without its trailing slash.
DROPPED_SLASH_VALUE = (
    "no tenant token in the path: zincati needs the trailing slash on base_url "
    "(base_url = \"https://<host>/t/<token>/\"); without it the token is dropped"
)


def refused() -> LockdError:
    """The one answer to every refused secret."""
    return LockdError(Kind.invalid_tenant, REFUSED_VALUE)


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def new_token() -> str:
    """A fresh tenant token: ``lockd_`` + 32 random base62 characters + a 6-character
    checksum of them."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(TOKEN_RANDOM_LENGTH))
    return TOKEN_PREFIX + body + _checksum(body)


def is_secret(text: str) -> bool:
    """Whether ``text`` may name a tenant: a well-formed token with a correct checksum, or
    at least :data:`MIN_SECRET_LENGTH` letters and digits."""
    if text.startswith(TOKEN_PREFIX):
        rest = text[len(TOKEN_PREFIX) :]
        if not _SECRET_RE.fullmatch(rest) or len(rest) < MIN_SECRET_LENGTH + CHECKSUM_LENGTH:
            return False
        body, check = rest[:-CHECKSUM_LENGTH], rest[-CHECKSUM_LENGTH:]
        return hmac.compare_digest(_checksum(body), check)
    return _SECRET_RE.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Tenant:
    """A resolved request: the tenant's secret, how it came, and the group inside it."""

    secret: str
    carrier: str  # "path", "basic" or "group"
    group: str


def _basic_user(header: str) -> str | None:
    """The secret in ``Authorization: Basic``: the user name, else the password."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise refused() from None
    user, _, password = decoded.partition(":")
    return user or password


def resolve(prefix: str, authorization: str | None, group: str) -> Tenant:
    """The tenant of a FleetLock request, from its path prefix (what came before
    ``/v1/``), its Authorization header and the group of its body. Raises the one
    :func:`refused` answer for any refused secret, :data:`DROPPED_SLASH_VALUE` for ``/t/v1``."""
    if prefix == "/t":
        raise LockdError(Kind.not_found, DROPPED_SLASH_VALUE)
    if prefix.startswith("/t/"):
        secret, carrier = prefix[3:], "path"
    elif prefix:
        raise LockdError(Kind.not_found, "no such endpoint")
    elif authorization and (user := _basic_user(authorization)) is not None:
        secret, carrier = user, "basic"
    else:
        secret, carrier = group, "group"
    if not is_secret(secret):
        raise refused()
    if carrier == "group":
        return Tenant(secret, carrier, ROOT_GROUP)
    return Tenant(secret, carrier, group)


class Keys:
    """HMAC-SHA256 under the server's pepper: the only way a secret or a group name
    becomes something stored. The pepper is never stored, logged or shown."""

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < MIN_PEPPER_BYTES:
            raise ValueError(f"the pepper must be at least {MIN_PEPPER_BYTES} bytes")
        self._pepper = pepper

    def __repr__(self) -> str:
        return "Keys(<pepper>)"

    def _mac(self, *parts: str) -> str:
        msg = b"\x00".join(p.encode() for p in parts)
        return hmac.new(self._pepper, msg, hashlib.sha256).hexdigest()[:HASH_HEX]

    def tenant(self, secret: str) -> str:
        """The tenant's hash: HMAC(pepper, "tenant", secret)."""
        return self._mac("lockd-tenant", secret)

    def group(self, secret: str, group: str) -> str:
        """The service group of ``group`` in the tenant ``secret``: ``<tenant>.<group>``,
        with the group's hash HMAC(pepper, "group", secret, group)."""
        return f"{self.tenant(secret)}.{self._mac('lockd-group', secret, group)}"

    # Group names, sealed: a tenant lists its groups by name, and the store must not
    # hold them in clear. Authenticated encryption built from HMAC-SHA256 alone (no new
    # dependency): a synthetic IV (SIV) from the name, HMAC in counter mode as the key
    # stream, an HMAC tag over IV and ciphertext; names are padded to 32-byte blocks.

    def _name_key(self, secret: str) -> bytes:
        return hmac.new(self._pepper, b"lockd-name-key\x00" + secret.encode(),
                        hashlib.sha256).digest()

    @staticmethod
    def _stream(key: bytes, iv: bytes, size: int) -> bytes:
        blocks = (hmac.new(key, iv + i.to_bytes(4, "big"), hashlib.sha256).digest()
                  for i in range(-(-size // 32)))
        return b"".join(blocks)[:size]

    def seal(self, secret: str, group: str) -> bytes:
        """``group`` encrypted under a key only ``secret`` (with the pepper) gives."""
        key = self._name_key(secret)
        raw = group.encode()
        padded = raw + b"\x00" * (-len(raw) % 32 or (0 if raw else 32))
        iv = hmac.new(key, b"iv\x00" + padded, hashlib.sha256).digest()[:16]
        body = bytes(a ^ b for a, b in zip(padded, self._stream(key, iv, len(padded)),
                                           strict=True))
        tag = hmac.new(key, b"tag\x00" + iv + body, hashlib.sha256).digest()[:16]
        return b"lockd-name-v1:" + base64.urlsafe_b64encode(iv + body + tag)

    def unseal(self, secret: str, sealed: bytes) -> str | None:
        """The name :meth:`seal` sealed for ``secret``; None for anything else."""
        head, _, data = sealed.partition(b":")
        try:
            blob = base64.urlsafe_b64decode(data)
        except (binascii.Error, ValueError):
            return None
        if head != b"lockd-name-v1" or len(blob) < 64:
            return None
        key = self._name_key(secret)
        iv, body, tag = blob[:16], blob[16:-16], blob[-16:]
        want = hmac.new(key, b"tag\x00" + iv + body, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(tag, want):
            return None
        padded = bytes(a ^ b for a, b in zip(body, self._stream(key, iv, len(body)),
                                             strict=True))
        try:
            return padded.rstrip(b"\x00").decode()
        except UnicodeDecodeError:
            return None


_TOKEN_IN_PATH = re.compile(r"/t/[^/]+")


def redact(path: str) -> str:
    """A request path fit for a log line: a token in it becomes ``<token>``."""
    return _TOKEN_IN_PATH.sub("/t/<token>", path)


def short(service_group: str) -> str:
    """What logs show of a tenant's group: a prefix of the tenant's hash."""
    return service_group[:LOG_HEX]


class TenantLayout(NativeLayout):
    """lockd's own document, under a prefix of its own for tenants' groups."""

    name = "tenant"
    prefix = "lockd/v1/tenants/"


#: Where a tenant group's sealed name is kept: this prefix + ``<tenant>.<group>`` hashes.
NAMES_PREFIX = "lockd/v1/tenant-names/"
#: How many tenants have a group (counted up at a first grant, down when the GC deletes a
#: tenant's last group; approximate under races, never below zero), for the tenants quota.
COUNT_KEY = "lockd/v1/tenant-count"
#: The most groups one listing shows.
MAX_LISTED = 1000
#: The idle clock is refreshed by a request that writes nothing once per this fraction of
#: the idle time (lockd.semaphore.touch): at most 4 writes per group per idle period.
TOUCH_FRACTION = 4
#: Idle-group GC: seconds between passes (jittered), groups read per pass, and hex digits
#: of the tenant hash that pick the slice of the keyspace one pass lists (16**2 slices).
GC_INTERVAL = 60.0
GC_BATCH = 200
GC_SLICE_HEX = 2


class Public:
    """Public mode's pieces: the keyed hashes, the service over tenants' groups, and the
    sealed group names that let a tenant list its own groups."""

    def __init__(
        self,
        keys: Keys,
        service: LockService,
        limits: Limits,
        *,
        max_groups: int = 100,
        max_tenants: int = 1_000_000,
        idle_after: float | None = None,
        gc_batch: int = GC_BATCH,
        gc_slice_hex: int = GC_SLICE_HEX,
    ) -> None:
        self.keys = keys
        self.service = service
        self.limits = limits
        self.max_groups = max_groups
        self.max_tenants = max_tenants
        self.backend: Backend = service.backend
        #: Seconds without a holder or a request after which a group is deleted; None: never.
        self.idle_after = idle_after
        if idle_after is not None:
            service.touch_every = idle_after / TOUCH_FRACTION
        self.gc_batch = gc_batch
        self.gc_slice_hex = gc_slice_hex
        # Where the GC goes on: the slice of tenant hashes, and the last key read in it.
        self._slice = 0
        self._after = ""
        # Service group -> until when (by the service's clock) this process may trust
        # that its name record exists / its document exists. A group can be collected no
        # sooner than `idle_after` after the idle clock it showed (every write sets that
        # clock), so half of that is trusted; then a group another replica collected
        # counts as new again (create limit, quotas) and gets its name recorded again.
        # Bounded, so a flood of tenants costs one store read per grant at worst.
        self._named: dict[str, float] = {}
        self._exists: dict[str, float] = {}

    def _trusted(self, cache: dict[str, float], service_group: str) -> bool:
        return cache.get(service_group, -math.inf) > self.service.clock()

    def _trust_until(self, touched: float | None) -> float:
        """How long a group seen with idle clock ``touched`` cannot have been collected."""
        if self.idle_after is None:
            return math.inf
        # No clock yet: the GC stamps one before it may delete, so from now on.
        start = self.service.clock() if touched is None else touched
        return start + self.idle_after / 2

    async def exists(self, service_group: str) -> bool:
        """Whether the group has a stored document (a pre-reboot there creates nothing)."""
        if self._trusted(self._named, service_group) or self._trusted(self._exists,
                                                                      service_group):
            return True
        raw, _ = await self._store(self.backend.get(self.service.layout.key(service_group)))
        if raw is not None:
            try:
                sem = self.service.layout.decode(raw)
            except LayoutError:
                return True  # exists; the service reports the bad value
            # With holders it cannot go before their release (a write, which sets the
            # clock) plus the idle time: trust it from now, however old its clock.
            start = self.service.clock() if sem.holders else sem.touched
            _bounded_put(self._exists, service_group, self._trust_until(start))
        return raw is not None

    async def check_quota(self, tenant: Tenant) -> bool:
        """Before a new group is created: refuse past the groups-per-tenant or the tenants
        quota (approximate under concurrent creation). True if the tenant is new."""
        names = await self._store(self.backend.scan(self._names_of(tenant.secret)))
        if len(names) >= self.max_groups:
            raise LockdError(
                Kind.quota_exceeded,
                f"this tenant has {self.max_groups} groups, the most this server allows",
            )
        if names:
            return False
        if await self.tenant_count() >= self.max_tenants:
            raise LockdError(Kind.quota_exceeded, "this server takes no new tenants")
        return True

    async def tenant_count(self) -> int:
        """Tenants with a group (a counter kept beside the groups; see COUNT_KEY)."""
        raw, _ = await self._store(self.backend.get(COUNT_KEY))
        return 0 if raw is None else int(json.loads(raw)["tenants"])

    async def _count_tenants(self, change: int) -> None:
        """Add ``change`` to the tenants counter, never below zero (bounded retries: the
        counter is approximate anyway)."""
        for _ in range(10):
            raw, version = await self.backend.get(COUNT_KEY)
            count = 0 if raw is None else int(json.loads(raw)["tenants"])
            value = json.dumps({"tenants": max(0, count + change)}).encode()
            if (await self.backend.compare_and_set(COUNT_KEY, value, version)).stored:
                return

    async def _store(self, call: Awaitable[T]) -> T:
        """A store call bounded by the service's timeout; 503 when it fails."""
        try:
            async with asyncio.timeout(self.service.timeout):
                return await call
        except (BackendUnavailable, TimeoutError) as exc:
            raise LockdError(
                Kind.backend_unavailable, "the lock store cannot be reached; try again later"
            ) from exc

    def _names_of(self, secret: str) -> str:
        return f"{NAMES_PREFIX}{self.keys.tenant(secret)}."

    async def record_name(
        self, tenant: Tenant, service_group: str, new_tenant: bool = False
    ) -> None:
        """Keep ``tenant.group``'s sealed name (once per group, after its first grant).
        A failure here costs the listing a name, never the grant: it is retried at the
        group's next grant."""
        if self._trusted(self._named, service_group):
            return
        key = NAMES_PREFIX + service_group
        try:
            async with asyncio.timeout(self.service.timeout):
                raw, _ = await self.backend.get(key)
                if raw is None:
                    created = await self.backend.compare_and_set(
                        key, self.keys.seal(tenant.secret, tenant.group), None
                    )
                    if created.stored and new_tenant:
                        await self._count_tenants(+1)
        except (BackendUnavailable, OSError, TimeoutError) as exc:
            log.warning("tenant %s: group name not recorded yet: %s", short(service_group),
                        exc or "timed out")
            return
        # The grant just before this set the group's idle clock.
        _bounded_put(self._named, service_group, self._trust_until(self.service.clock()))

    async def group_names(self, secret: str) -> list[str]:
        """The tenant's groups that have had a grant, by name, sorted (at most
        :data:`MAX_LISTED`)."""
        keys = await self._store(self.backend.scan(self._names_of(secret)))
        names = []
        for key in keys[: MAX_LISTED * 2]:
            raw, _ = await self._store(self.backend.get(key))
            name = None if raw is None else self.keys.unseal(secret, raw)
            # Only a name that hashes back to its own key is the tenant's.
            if name and NAMES_PREFIX + self.keys.group(secret, name) == key:
                names.append(name)
        return sorted(names)[:MAX_LISTED]

    # Idle-group GC

    async def collect(self) -> int:
        """One bounded pass of the idle-group GC: list one slice of the tenants' groups
        (those whose tenant hash starts with the slice's hex digits), read at most
        :attr:`gc_batch` of them, delete the idle ones. Returns how many it deleted.

        Safe on any number of replicas at once: each deletion is conditional on the
        version read, so only one replica deletes a group, and a grant (or any write)
        between the read and the delete makes the delete fail. Passes go on where the
        last one stopped; every slice is visited in turn.
        """
        if self.idle_after is None:
            return 0
        layout = self.service.layout
        width = self.gc_slice_hex
        piece = format(self._slice, f"0{width}x") if width else ""
        keys = await self._store(self.backend.scan(layout.group_prefix() + piece))
        todo = [k for k in keys if k > self._after][: self.gc_batch]
        deleted = 0
        for key in todo:
            if await self._collect_one(key):
                deleted += 1
            self._after = key
        if len(todo) < self.gc_batch:  # this slice is done: the next pass takes the next
            await self._forget_orphans(piece, keys)
            self._slice = (self._slice + 1) % (16**width)
            self._after = ""
        return deleted

    async def _forget_orphans(self, piece: str, keys: list[str]) -> None:
        """Names in the slice whose group is gone: what a collection stopped between the
        group's delete and its name's (a restart, a store error) left behind. A name is
        only written after its group's grant, so a name without a group is an orphan."""
        layout = self.service.layout
        groups = {layout.group_of(k) for k in keys}
        names = await self._store(self.backend.scan(NAMES_PREFIX + piece))
        orphans = [n[len(NAMES_PREFIX):] for n in names if n[len(NAMES_PREFIX):] not in groups]
        for service_group in orphans[: self.gc_batch]:
            if (await self._store(self.backend.get(layout.key(service_group))))[0] is None:
                await self._forget_name(service_group)

    async def _collect_one(self, key: str) -> bool:
        layout = self.service.layout
        raw, version = await self._store(self.backend.get(key))
        if raw is None:
            return False
        try:
            sem = layout.decode(raw)
        except LayoutError:
            return False  # never delete what cannot be read; the service reports it
        now = self.service.clock()
        if sem.holders:
            return False
        if sem.touched is None:
            # Written before the idle clock existed: start it now (on the version read; a
            # lost race means someone wrote, which set it).
            stamped = replace(sem, touched=now)
            await self._store(
                self.backend.compare_and_set(key, layout.encode(stamped, raw), version))
            return False
        if now - sem.touched < self.idle_after:  # type: ignore[operator]
            return False
        if not (await self._store(self.backend.compare_and_delete(key, version))).stored:
            return False  # it changed since the read: in use again
        service_group = layout.group_of(key)
        assert service_group is not None
        self._named.pop(service_group, None)
        self._exists.pop(service_group, None)
        log.info("tenant %s: deleted a group idle since %s", short(service_group),
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sem.touched)),
                 extra={"event": "group_collected", "group": short(service_group)})
        await self._forget_name(service_group)
        return True

    async def _forget_name(self, service_group: str) -> None:
        """Delete a collected group's sealed name, and count its tenant gone if that was
        its last group."""
        name_key = NAMES_PREFIX + service_group
        sealed, version = await self._store(self.backend.get(name_key))
        if sealed is None:
            return
        deleted = (await self._store(self.backend.compare_and_delete(name_key, version))).stored
        # A request may have created the group again since its delete and, finding the
        # name still recorded, not recorded it: put the same sealed bytes back then.
        group_key = self.service.layout.key(service_group)
        if (await self._store(self.backend.get(group_key)))[0] is not None:
            await self._store(self.backend.compare_and_set(name_key, sealed, None))
            return
        tenant = service_group.partition(".")[0]
        if deleted and not await self._store(self.backend.scan(f"{NAMES_PREFIX}{tenant}.")):
            await self._store(self._count_tenants(-1))

    async def run_collector(self, interval: float = GC_INTERVAL) -> None:
        """Collect every ``interval`` seconds (jittered, so replicas drift apart) until
        cancelled. A failed pass is logged and the next one goes on."""
        await every(lambda: interval * random.uniform(0.5, 1.5), self.collect,
                    "idle-group GC pass")

    @contextlib.asynccontextmanager
    async def collecting(self) -> AsyncIterator[None]:
        """Run the idle-group GC (if ``idle_after`` is set) while the app runs."""
        if self.idle_after is None:
            yield
            return
        task = asyncio.create_task(self.run_collector())
        try:
            yield
        finally:
            await stop(task)

    async def admit(
        self, request: web.Request, prefix: str, group: str, *, creates: bool = False
    ) -> tuple[Tenant, str]:
        """Resolve and rate-limit one request: ``(tenant, service group)``.

        Every request counts against its client's address; a refused secret also against
        its client's misses; every other request against its tenant; ``creates`` (a
        pre-reboot) also against its client's new groups when the group does not exist
        yet, and is held to the quotas."""
        # Every X-Forwarded-For line, in order: haproxy adds a line of its own rather than
        # appending to one the client sent, and the first line is the client's to forge.
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
        client = self.limits.client(request.remote, forwarded or None)
        # Before anything else, so that no tenant (each a fresh per-tenant counter) and no
        # miss escapes it.
        await self.limits.check_ip(client)
        try:
            tenant = resolve(prefix, request.headers.get("Authorization"), group)
        except LockdError as exc:
            if exc.kind in (Kind.invalid_tenant, Kind.not_found):
                await self.limits.check_miss(client)
            raise
        await self.limits.check_tenant(self.keys.tenant(tenant.secret))
        service_group = self.keys.group(tenant.secret, tenant.group)
        request[NEW_TENANT] = False
        if creates and not await self.exists(service_group):
            await self.limits.check_create(client)
            request[NEW_TENANT] = await self.check_quota(tenant)
        return tenant, service_group


def _bounded_put(seen: dict[str, float], item: str, until: float, most: int = 100_000) -> None:
    """Remember ``item`` until ``until``; past ``most``, forget everything (a cache, not a
    record)."""
    if len(seen) >= most:
        seen.clear()
    seen[item] = until


#: Set by :meth:`Public.admit` on a request that creates a tenant's first group.
NEW_TENANT = web.RequestKey("lockd.new_tenant", bool)
PUBLIC = web.AppKey("public", Public)


def logging_observer(inner: Callable[[Decision], None]) -> Callable[[Decision], None]:
    """``inner`` (the decision log) fed tenants' decisions with only a short hash for the
    group."""

    def observe(d: Decision) -> None:
        inner(replace(d, group=short(d.group)))

    return observe
