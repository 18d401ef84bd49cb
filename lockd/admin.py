"""The admin listener: JSON admin API, the HTML status page and ``/metrics``.

Served on its own listener (``[admin] address/port``, 127.0.0.1:8081 by default), never on
the FleetLock one. With ``[admin] token_file`` every route but the status page shell, the
OpenAPI document and ``/healthz`` requires ``Authorization: Bearer <token>``; a request
without the right token gets a 401 JSON error and changes nothing.

Routes (documented in ``lockd/openapi.json``, served at ``/api/openapi.json``)::

    GET  /                                   status page (HTML; data comes from the API)
    GET  /api/v1/groups                      every group with slots, holders, paused, policy
    GET  /api/v1/groups/{group}              one group
    POST /api/v1/groups/{group}/unlock       {"id": ...}: free a dead node's slot
    PUT  /api/v1/groups/{group}/slots        {"slots": N}: change slots at run time
    POST /api/v1/groups/{group}/pause        refuse new grants
    POST /api/v1/groups/{group}/resume
    GET  /metrics                            Prometheus exposition

A web page the operator's browser shows must not be able to use the listener (it is
loopback-only and token-less by default, and often reached through ``ssh -L``). So every
request whose ``Host`` is not a name this listener serves (localhost, 127.0.0.1, [::1], the
configured address and the one the connection arrived at; more with
``admin.allowed_hosts``) is refused with a 403, which defeats DNS rebinding; so is one with
a foreign ``Origin`` (its own, from the status page, and ``admin.allowed_origins`` pass).
A state-changing request (POST/PUT/DELETE under ``/api/``) with a body must declare it
``Content-Type: application/json`` (else 415): a page cannot send that cross-origin without a
CORS preflight, which this listener never grants. A write without a body and without a
Content-Type (``lockd pause``) passes; a browser sends an Origin with it.

Every change is logged by ``lockd.admin`` as one structured ``admin_change`` event: who
(actor from ``X-Lockd-Actor``, remote address, whether a token was checked), what (action,
group, id, before and after) and when.

:func:`listeners` is what :mod:`lockd.daemon` starts.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from lockd import policyview
from lockd.config import MAX_SLOTS as CONFIG_MAX_SLOTS
from lockd.config import ConfigError, Settings
from lockd.errors import Kind, LockdError
from lockd.fleetlock import MAX_ID_LENGTH
from lockd.groups import GROUP_RULE, is_group_name
from lockd.http import (
    SERVICE,
    SETTINGS,
    RateLimitedLog,
    expect_within,
    json_errors,
    read_body,
)
from lockd.metrics import METRICS
from lockd.semaphore import Holder, Outcome, Semaphore
from lockd.service import LockService

log = logging.getLogger("lockd.admin")

HERE = Path(__file__).resolve().parent
STATUS_PAGE = HERE / "static" / "status.html"
OPENAPI = HERE / "openapi.json"

#: Upper bound for set-slots: far above any fleet, low enough to catch a typo'd paste.
#: One bound for slots, in configuration and in the admin API alike.
MAX_SLOTS = CONFIG_MAX_SLOTS
#: Groups shown by one listing; a self-hosted fleet has a handful.
MAX_LISTED_GROUPS = 1000
MAX_ACTOR_LENGTH = 128
ACTOR_HEADER = "X-Lockd-Actor"
#: Reachable without a token: they carry no fleet data.
PUBLIC_PATHS = frozenset({"/", "/api/openapi.json", "/healthz"})
#: The page inlines its script and style and talks only to this listener.
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

#: The largest admin request body (set-slots, unlock).
MAX_BODY = 4096
#: Methods that change something; they must declare a JSON body.
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
#: Names that always mean this machine; a DNS rebinding cannot use them.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})

MAIN = web.AppKey("main", web.Application)
#: (name, app, host, port), as lockd.daemon starts them.
Listening = tuple[str, web.Application, str, int]


class BearerToken:
    """The admin token, read from a file; re-read when the file changes (rotation)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.expanduser(path)
        self._mtime: float | None = None
        self._problem: str | None = None
        self._token: bytes | None = self._read()

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as fh:
                self._mtime = os.fstat(fh.fileno()).st_mtime
                token = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"admin.token_file: cannot read {self.path}: {exc}") from None
        if not token:
            # An empty token would let "Authorization: Bearer " in.
            raise ConfigError(f"admin.token_file: {self.path} is empty")
        return token

    def current(self) -> bytes | None:
        """The token, or None while the file cannot be read (removed, unreadable, empty):
        then nothing is accepted, since a token that was revoked by deleting its file must
        not keep working. Said once per change, not once per request."""
        try:
            if os.stat(self.path).st_mtime != self._mtime or self._token is None:
                self._token = self._read()
                if self._problem is not None:
                    log.warning("admin token file readable again: %s", self.path)
                self._problem = None
        except (OSError, ConfigError) as exc:
            problem = str(exc)
            if problem != self._problem:
                log.error("admin token file unreadable; refusing every admin request "
                          "until it is back: %s", problem)
            self._problem, self._token, self._mtime = problem, None, None
        return self._token

    def accepts(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, presented = authorization.partition(" ")
        token = self.current()
        if scheme.lower() != "bearer" or token is None:
            return False
        # aiohttp decodes headers with surrogateescape: encode back to the bytes sent, so
        # a non-UTF-8 token is simply a wrong one.
        sent = presented.strip().encode("utf-8", "surrogateescape")
        # Constant time: the comparison must not tell how much of a guess was right.
        return hmac.compare_digest(sent, token)


TOKEN = web.AppKey("token", BearerToken)


# Browser safety: Host, Origin, Content-Type


def split_host(value: str) -> tuple[str, int | None] | None:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (lowercase host, port or None);
    None when it is not one of those. A bare IPv6 address (allow-list entries) has no port."""
    value = value.strip().lower()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif value.count(":") > 1:
        host, port = value, None
    else:
        host, sep, port_text = value.partition(":")
        port = port_text if sep else None
    if not host:
        return None
    if port is None:
        return host, None
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return None
    return host, int(port)


def _origin(value: str) -> str | None:
    """An origin (``scheme://host[:port]``), normalised; None when it is not one."""
    value = value.strip().lower().removesuffix("/")
    scheme, sep, netloc = value.partition("://")
    if not sep or scheme not in ("http", "https") or split_host(netloc) is None:
        return None
    return value


@dataclass(frozen=True)
class Origins:
    """Which Host and Origin headers this admin listener answers.

    A Host passes when it names this machine (localhost, 127.0.0.1, [::1]), the configured
    admin address or the address the connection arrived at, or an admin.allowed_hosts
    entry; an entry with a port allows that port only. The port is not checked otherwise:
    ssh -L, kubectl port-forward and published container ports all change the port the
    browser or the CLI sees, and a DNS rebinding is in the name, never in the port.
    """

    names: frozenset[str]  # this machine and the configured admin address, any port
    hosts: frozenset[tuple[str, int | None]]  # admin.allowed_hosts; None: any port
    origins: frozenset[str]  # admin.allowed_origins, normalised

    @classmethod
    def of(cls, settings: Settings) -> Origins:
        names = set(LOOPBACK_NAMES)
        if settings.admin_listen is not None:
            address = settings.admin_listen.host.lower().strip("[]")
            if address not in WILDCARD_ADDRESSES:
                names.add(address)
        hosts = set()
        for entry in _strings(settings, "admin_allowed_hosts"):
            parsed = split_host(entry)
            if parsed is None:
                raise ConfigError(f"admin.allowed_hosts: {entry!r} is not a host or host:port")
            hosts.add(parsed)
        origins = set()
        for entry in _strings(settings, "admin_allowed_origins"):
            origin = _origin(entry)
            if origin is None:
                raise ConfigError(
                    f"admin.allowed_origins: {entry!r} is not an origin (http[s]://host[:port])"
                )
            origins.add(origin)
        return cls(frozenset(names), frozenset(hosts), frozenset(origins))

    def serves_host(self, header: str, local_address: str | None) -> bool:
        parsed = split_host(header)
        if parsed is None:
            return False
        host, port = parsed
        return (
            host in self.names
            or host == local_address
            or (host, None) in self.hosts
            or (port is not None and (host, port) in self.hosts)
        )

    def allows_origin(self, header: str, host: str) -> bool:
        origin = _origin(header)
        if origin is None:  # "null" (sandboxed frames, some redirects) included
            return False
        # The listener's own origin (the status page) is the Host it was asked by.
        return origin in self.origins or origin.partition("://")[2] == host.strip().lower()


def _strings(settings: Settings, name: str) -> Iterable[str]:
    return [str(v) for v in getattr(settings, name)]


ORIGINS = web.AppKey("origins", Origins)
refusals = RateLimitedLog(log, "refused admin requests")


def _local_address(request: web.Request) -> str | None:
    """The address this request's connection arrived at (with admin.address 0.0.0.0, the
    one a probe or a scraper names in Host)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple):
        return None
    return str(sockname[0]).lower().removeprefix("::ffff:")


def _forbidden(request: web.Request, value: str) -> LockdError:
    refusals.warning(
        f"admin: refused {request.method} {_shown(request.path)} from "
        f"{request.remote or 'unknown'}: {value}"
    )
    return LockdError(Kind.forbidden, value)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


@web.middleware
async def same_origin(request: web.Request, handler: Any) -> web.StreamResponse:
    """403 unless Host is a name this listener serves and Origin, if sent, is its own."""
    origins = request.app[ORIGINS]
    hosts = request.headers.getall(hdrs.HOST, [])
    if len(hosts) > 1:
        raise _forbidden(request, "more than one Host header")
    host = hosts[0] if hosts else ""
    # No Host at all: an HTTP/1.0 tool, never a browser.
    if hosts and not origins.serves_host(host, _local_address(request)):
        raise _forbidden(
            request,
            f"Host {_shown(host)} is not a name this admin listener serves "
            "(see admin.allowed_hosts)",
        )
    sent = request.headers.getall(hdrs.ORIGIN, [])
    if len(sent) > 1 or (sent and not origins.allows_origin(sent[0], host)):
        raise _forbidden(
            request,
            f"cross-origin request from {_shown(', '.join(sent))} refused "
            "(see admin.allowed_origins)",
        )
    return await handler(request)


@web.middleware
async def json_writes(request: web.Request, handler: Any) -> web.StreamResponse:
    """415 for a state-changing API request whose body is not declared JSON."""
    if (
        request.method in WRITE_METHODS
        and request.path.startswith("/api/")
        and request.match_info.http_exception is None  # a route that exists and takes it
    ):
        ctype = request.headers.get(hdrs.CONTENT_TYPE)
        if ctype is None:
            declared = not request.body_exists  # `lockd pause`: no body, no type
        else:
            declared = ctype.partition(";")[0].strip().lower() == "application/json"
        if not declared:
            raise LockdError(
                Kind.unsupported_media_type,
                "admin changes take a JSON body sent as Content-Type: application/json",
            )
    return await handler(request)


@web.middleware
async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
    token = request.app.get(TOKEN)
    if token is None or request.path in PUBLIC_PATHS:
        return await handler(request)
    if not token.accepts(request.headers.get("Authorization")):
        value = "a valid admin token is required (Bearer)"
        if token.current() is None:
            value = "the server cannot read its admin token file; ask its operator"
        error = LockdError(Kind.unauthorized, value)
        return web.json_response(
            error.as_json(),
            status=error.status,
            headers={"WWW-Authenticate": 'Bearer realm="lockd-admin"'},
        )
    return await handler(request)


# Views


def holder_view(h: Holder, now: float) -> dict[str, Any]:
    """A holder as JSON. Holders granted by airlock or locksmith have no grant time or id
    (stored as 0): those are null, never a 56-year age."""
    known = h.granted_at > 0
    return {
        "id": h.id,
        "granted_at": h.granted_at if known else None,
        "granted_at_iso": _iso(h.granted_at) if known else None,
        "age_seconds": round(max(0.0, now - h.granted_at), 3) if known else None,
        "grant_id": h.grant_id or None,
    }


def group_view(
    service: LockService, name: str, sem: Semaphore, stored: bool, now: float
) -> dict[str, Any]:
    groups = service.groups
    configured = groups.slots.get(name)
    view = {
        "name": name,
        "slots": sem.slots,
        "available": sem.available,
        # locksmith's own counter of free slots (etcd2 layout), which locksmithctl prints;
        # it can disagree with slots - holders, or go negative after a set-max.
        "store_counter": sem.free_counter,
        "holders": [holder_view(h, now) for h in sorted(sem.holders, key=lambda h: h.grant_id)],
        "paused": sem.paused,
        "stored": stored,
        "policy": {
            "configured_slots": configured,
            "slots_source": "group" if configured is not None else "default_slots",
            "default_slots": groups.default_slots,
            "strict_groups": groups.strict,
            "store_owns_slots": bool(service.layout.store_owns_slots),
            "config_mismatch": _mismatch(service, name),
        },
    }
    return policyview.extend(view, service, name, sem, now)  # windows, stale, history...


def _mismatch(service: LockService, name: str) -> dict[str, int | None] | None:
    """Where this replica's configured slots differ from what another replica's
    configuration wrote (see LockService.configured_state); None where they agree."""
    found = service.config_mismatches.get(name)
    return None if found is None else {"configured_here": found[0], "in_store": found[1]}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# Request parsing


def _service(request: web.Request) -> LockService:
    return request.app[MAIN][SERVICE]


def _group(request: web.Request) -> str:
    group = request.match_info["group"]
    if not is_group_name(group):
        raise LockdError(Kind.invalid_group, f"group {GROUP_RULE}")
    return group


async def _json_body(request: web.Request) -> dict[str, Any]:
    settings = request.app[MAIN][SETTINGS]
    body = await read_body(request, MAX_BODY, settings.body_timeout)
    try:
        doc = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise LockdError(Kind.invalid_body, "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise LockdError(Kind.invalid_body, "request body must be a JSON object")
    return doc


@dataclass(frozen=True)
class Actor:
    """Who made a change, as far as the admin listener can tell."""

    name: str
    remote: str
    token: bool

    @classmethod
    def of(cls, request: web.Request) -> Actor:
        name = request.headers.get(ACTOR_HEADER, "").strip()
        if not name or len(name) > MAX_ACTOR_LENGTH or not name.isprintable():
            name = "admin-api"
        return cls(name, request.remote or "unknown", TOKEN in request.app)


async def _existing(service: LockService, group: str) -> tuple[Semaphore, bool]:
    """The group's state and whether it is stored; 404 if it neither exists nor is configured.

    Admin changes never create a group by accident: `lockd pause wrokers` must fail.
    """
    sem = await service.read(group)  # unknown_group under strict_groups
    if sem is not None:
        return sem, True
    configured = service.groups.slots.get(group)
    if configured is None:
        raise LockdError(
            Kind.unknown_group, f"group {group!r} does not exist (never used, not configured)"
        )
    return Semaphore.new(configured), False


def _record(
    request: web.Request, action: str, group: str, before: dict[str, Any], after: dict[str, Any],
    **what: Any,
) -> None:
    actor = Actor.of(request)
    log.info(
        "admin %s %s by %s from %s",
        action,
        group,
        actor.name,
        actor.remote,
        extra={
            "event": "admin_change",
            "actor": actor.name,
            "remote": actor.remote,
            "token": actor.token,
            "action": action,
            "group": group,
            "before": before,
            "after": after,
            "at": _iso(time.time()),
            **what,
        },
    )


def _summary(sem: Semaphore) -> dict[str, Any]:
    return {"slots": sem.slots, "holders": len(sem.holders), "paused": sem.paused}


# Handlers


async def list_groups(request: web.Request) -> web.Response:
    service = _service(request)
    names = sorted(set(await service.list_groups()) | set(service.groups.slots))
    truncated = len(names) > MAX_LISTED_GROUPS
    names = names[:MAX_LISTED_GROUPS]

    async def one(name: str) -> tuple[str, Semaphore | None]:
        try:
            return name, await service.read(name)
        except LockdError as exc:
            if exc.kind is Kind.unknown_group:  # stored, no longer configured (strict)
                return name, None
            raise

    now = time.time()
    views = []
    for name, sem in await asyncio.gather(*(one(n) for n in names)):
        if sem is not None:
            views.append(group_view(service, name, sem, True, now))
        elif (configured := service.groups.slots.get(name)) is not None:
            views.append(group_view(service, name, Semaphore.new(configured), False, now))
    return web.json_response({"now": now, "groups": views, "truncated": truncated})


async def get_group(request: web.Request) -> web.Response:
    service = _service(request)
    group = _group(request)
    sem, stored = await _existing(service, group)
    now = time.time()
    return web.json_response({"now": now, **group_view(service, group, sem, stored, now)})


async def unlock(request: web.Request) -> web.Response:
    service = _service(request)
    group = _group(request)
    doc = await _json_body(request)
    id_ = doc.get("id")
    if not isinstance(id_, str) or not id_ or len(id_) > MAX_ID_LENGTH or not id_.isprintable():
        raise LockdError(
            Kind.invalid_client_identity,
            f"id must be a non-empty printable string of at most {MAX_ID_LENGTH} characters",
        )
    before, _ = await _existing(service, group)
    outcome = await service.force_unlock(group, id_, actor=Actor.of(request).name)
    if outcome is Outcome.NOT_HELD:
        raise LockdError(Kind.not_found, f"{id_!r} holds no slot in group {group!r}")
    after, stored = await _existing(service, group)
    _record(request, "force-unlock", group, _summary(before), _summary(after), id=id_)
    now = time.time()
    return web.json_response(
        {"outcome": outcome.value, "group": group_view(service, group, after, stored, now)}
    )


async def set_slots(request: web.Request) -> web.Response:
    service = _service(request)
    group = _group(request)
    slots = (await _json_body(request)).get("slots")
    if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= MAX_SLOTS:
        raise LockdError(
            Kind.invalid_request, f"slots must be a whole number from 1 to {MAX_SLOTS}"
        )
    before, _ = await _existing(service, group)
    after = await service.set_slots(group, slots, actor=Actor.of(request).name)
    _record(request, "set-slots", group, _summary(before), _summary(after))
    return web.json_response(
        {
            "old_slots": before.slots,
            "slots": after.slots,
            "group": group_view(service, group, after, True, time.time()),
        }
    )


async def _pause(request: web.Request, paused: bool) -> web.Response:
    service = _service(request)
    group = _group(request)
    if await _json_body(request):
        raise LockdError(Kind.invalid_body, "pause and resume take no parameters: send {} "
                         "or no body")
    before, _ = await _existing(service, group)
    after = await service.set_paused(group, paused, actor=Actor.of(request).name)
    _record(request, "pause" if paused else "resume", group, _summary(before), _summary(after))
    return web.json_response(
        {
            "changed": before.paused != after.paused,
            "group": group_view(service, group, after, True, time.time()),
        }
    )


async def pause(request: web.Request) -> web.Response:
    return await _pause(request, True)


async def resume(request: web.Request) -> web.Response:
    return await _pause(request, False)


async def metrics(request: web.Request) -> web.Response:
    main = request.app[MAIN]
    collected = main[METRICS]
    await collected.refresh(main[SERVICE])
    return collected.response()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def status_page(request: web.Request) -> web.Response:
    return web.Response(
        body=STATUS_PAGE.read_bytes(),
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store", "Content-Security-Policy": PAGE_CSP},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.Response(
        body=OPENAPI.read_bytes(), content_type="application/json", charset="utf-8"
    )


# Applications


def create_admin_app(settings: Settings, main: web.Application) -> web.Application:
    """The admin application for the FleetLock app ``main`` (its service and metrics)."""
    app = web.Application(
        middlewares=[json_errors, same_origin, require_token, json_writes],
        client_max_size=MAX_BODY,
    )
    app[MAIN] = main
    app[ORIGINS] = Origins.of(settings)
    if settings.admin_token_file:
        app[TOKEN] = BearerToken(settings.admin_token_file)
    r = app.router
    expect = expect_within(MAX_BODY)
    r.add_get("/", status_page)
    r.add_get("/api/openapi.json", openapi)
    r.add_get("/api/v1/groups", list_groups)
    r.add_get("/api/v1/groups/{group}", get_group)
    r.add_post("/api/v1/groups/{group}/unlock", unlock, expect_handler=expect)
    r.add_put("/api/v1/groups/{group}/slots", set_slots, expect_handler=expect)
    r.add_post("/api/v1/groups/{group}/pause", pause, expect_handler=expect)
    r.add_post("/api/v1/groups/{group}/resume", resume, expect_handler=expect)
    r.add_get("/metrics", metrics)
    r.add_get("/healthz", healthz)
    return app


def create_metrics_app(main: web.Application) -> web.Application:
    """airlock's ``[status]`` listener: ``/metrics`` (and ``/healthz``) only, no token."""
    app = web.Application(middlewares=[json_errors])
    app[MAIN] = main
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def listeners(settings: Settings, main: web.Application) -> list[Listening]:
    """The admin and [status] listeners :mod:`lockd.daemon` starts beside ``main``."""
    found: list[Listening] = []
    if settings.admin_listen is not None:
        a = settings.admin_listen
        found.append(("admin", create_admin_app(settings, main), a.host, a.port))
        if a.host not in ("127.0.0.1", "::1", "localhost") and not settings.admin_token_file:
            log.warning(
                "the admin listener on %s has no token: anyone who reaches it can unlock "
                "and pause groups; set admin.token_file",
                a,
            )
    if settings.metrics_listen is not None:
        m = settings.metrics_listen
        found.append(("metrics", create_metrics_app(main), m.host, m.port))
    return found

