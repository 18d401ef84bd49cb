"""The FleetLock HTTP frontend: ``create_app(settings) -> web.Application``.

Routes: ``POST [/prefix]/v1/pre-reboot``, ``POST [/prefix]/v1/steady-state`` (also with a
doubled slash), ``GET /healthz``, ``GET /readyz``. In public mode (``[public] enabled``) every
FleetLock request belongs to a tenant, resolved by :mod:`lockd.tenancy` before the service
is called; the service sees an ordinary (hashed) group name. Every non-200 answer is a JSON
``{"kind", "value"}`` from :class:`lockd.errors.Kind`; nothing a client sends yields a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from lockd import tenant_api
from lockd.config import Settings
from lockd.decisionlog import log_decision
from lockd.errors import Kind, LockdError
from lockd.fleetlock import check_protocol_header, parse_body, route
from lockd.groups import GroupSettings
from lockd.http import (
    SERVICE,
    SETTINGS,
    Handler,
    error_for,
    error_response,
    expect_within,
    read_body,
)
from lockd.metrics import (
    METRICS,
    MULTIPROCESS,
    VIEW_SYNC_S,
    Metrics,
    endpoint_of,
    request_kind,
    response_kind,
)
from lockd.policyrun import running_policy
from lockd.ratelimit import Limits, parse_networks
from lockd.semaphore import Outcome
from lockd.service import LockService, every, stop
from lockd.store import Store, TimedBackend, open_store
from lockd.tenancy import NEW_TENANT, PUBLIC, Keys, Public, TenantLayout, logging_observer
from lockd.view import View, follow

# Encoded once: the 200 answers are a handful of constant bodies.
_OUTCOME_BODIES = {o: json.dumps({"outcome": o.value}).encode() for o in Outcome}
#: Their one header, prebuilt (cheaper for aiohttp than content_type=; never changed:
#: aiohttp copies it).
_OUTCOME_HEADERS = {"Content-Type": "application/json"}


#: The GET-only routes beside FleetLock's, for a 405 (not the catch-all's 404) to other
#: methods.
PROBES = ("/healthz", "/readyz")
#: The FleetLock paths zincati asks (no tenant prefix, one slash).
FLEETLOCK_PATHS = ("/v1/pre-reboot", "/v1/steady-state")


async def fleetlock(request: web.Request) -> web.Response:
    if request.path in PROBES:
        return error_response(
            LockdError(Kind.method_not_allowed, f"{request.path} takes GET only"),
            headers={"Allow": "GET,HEAD"},
        )
    match = route(request.path)
    public = request.app.get(PUBLIC)
    if match is None or (match[0] and public is None):
        # Tenant prefixes are only served in public mode.
        raise LockdError(Kind.not_found, "no such endpoint")
    if request.method != "POST":
        return error_response(
            LockdError(Kind.method_not_allowed, "FleetLock endpoints take POST only"),
            headers={"Allow": "POST"},
        )
    settings = request.app[SETTINGS]
    check_protocol_header(request.headers)
    params = parse_body(
        await read_body(request, settings.max_body_bytes, settings.body_timeout)
    )
    tenant = None
    if public is None:
        service, group = request.app[SERVICE], params.group
    else:
        creates = match[1] == "pre-reboot"
        tenant, group = await public.admit(request, match[0], params.group,
                                           creates=creates)
        service = public.service
    if match[1] == "pre-reboot":
        answer = await service.try_lock(group, params.id)
        outcome = answer.outcome
        if not outcome.ok:  # full, paused, or refused by the group's reboot policy
            # Named as the client names it: a tenant's group is stored under a hash.
            # Answered here, not raised: the same response error_for would build, without
            # an exception through the middleware on every refusal of a storm (issue #15).
            return refused(service.refusal(params.group, answer))
    else:
        outcome = await service.steady_state(group, params.id)
    if outcome is Outcome.GRANTED and public is not None and tenant is not None:
        await public.record_name(tenant, group, request.get(NEW_TENANT, False))
    return web.Response(body=_OUTCOME_BODIES[outcome], headers=_OUTCOME_HEADERS)


def refused(error: LockdError) -> web.Response:
    """The JSON ``{kind, value}`` answer to a refusal, labelled with its kind for
    :func:`lockd.metrics.response_kind` (the label the raised error would have had)."""
    response = error_response(error, headers=error.headers)
    response.lockd_kind = error.kind._value_  # type: ignore[attr-defined]
    return response


@web.middleware
async def answer_and_count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The FleetLock listener's one middleware: every failure as a JSON ``{kind, value}``
    (lockd.http.error_for, as json_errors answers on the admin listener), and every
    request counted and timed by endpoint and kind (lockd.metrics). One layer rather than
    those two: each middleware costs every request a wrapper and a coroutine of aiohttp's
    (issue #15)."""
    started = time.perf_counter()
    try:
        response = await handler(request)
        kind = response_kind(response)
    except Exception as exc:
        kind = request_kind(exc)
        try:
            response = error_for(request, exc)
        finally:
            _count(request, kind, started)
        return response
    except BaseException:  # cancelled: counted, and the cancellation goes on
        _count(request, "internal_error", started)
        raise
    _count(request, kind, started)
    return response


def _count(request: web.Request, kind: str, started: float) -> None:
    request.app[METRICS].observe_request(
        endpoint_of(request.path), kind, time.perf_counter() - started
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    await request.app[SERVICE].ready()
    return web.json_response({"status": "ready"})


def service_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """Open the backend and the service with the app, close them with it."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = open_store(settings.backend_url)
        await store.backend.open()
        # The service sees the backend through a timer, for lockd_backend_* metrics.
        timed = replace(store, backend=TimedBackend(store.backend, app[METRICS].observe_backend))
        service = LockService(timed, settings.group_settings(), timeout=settings.timeout)
        service.observers.append(log_decision)
        service.observers.append(app[METRICS].observe)
        app[SERVICE] = service
        public = None
        if settings.public_enabled:
            public = app[PUBLIC] = public_service(settings, timed.backend)
        tasks = []
        if settings.view and store.backend.has_feed:
            service.view = View(settings.view_max_age, remember=service.remember)
            app[METRICS].watch_view(service.view)
            loop = asyncio.get_running_loop()
            tasks.append(loop.create_task(
                follow(store.backend, store.layout.group_prefix(), service.view)
            ))
            if MULTIPROCESS:  # other workers' scrapes see this view's counts as copied
                tasks.append(loop.create_task(
                    every(lambda: VIEW_SYNC_S, _synced(app[METRICS]), "view metrics")
                ))
        try:
            async with running_policy(settings, service, app[METRICS]), (
                public.collecting() if public else contextlib.nullcontext()
            ):
                yield
        finally:
            for task in tasks:
                await stop(task)
            await store.backend.close()

    return ctx


def _synced(metrics: Metrics) -> Callable[[], Awaitable[None]]:
    async def step() -> None:
        metrics.sync_view()

    return step


def public_service(settings: Settings, backend: TimedBackend) -> Public:
    """Tenants' groups: their own key prefix, ``default_slots`` each, and decisions logged
    with a short hash only (and kept out of per-group metrics, whose labels they would
    flood)."""
    store = Store(backend, TenantLayout())
    groups = GroupSettings(default_slots=settings.default_slots)
    service = LockService(store, groups, timeout=settings.timeout)
    service.observers.append(logging_observer(log_decision))
    limits = Limits(settings.backend_url, limits_url=settings.public_limits_url,
                    **limit_options(settings))
    public = Public(
        Keys(settings.public_pepper), service, limits,
        idle_after=settings.public_delete_idle_after,
    )
    configure_public(public, settings)
    return public


def limit_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of :class:`Limits` and :meth:`Limits.configure`."""
    return {
        "create": settings.public_ip_create_rate,
        "miss": settings.public_ip_miss_rate,
        "tenant": settings.public_tenant_rate,
        "ip": settings.public_ip_rate,
        "trusted_proxies": parse_networks(settings.public_trusted_proxies),
    }


def configure_public(public: Public, settings: Settings) -> None:
    """Apply the abuse limits and quotas (start-up and SIGHUP). Not the pepper: every
    stored key is derived from it, so a new pepper would orphan every tenant's state
    (and forget its holders); it is read once, at start-up."""
    public.limits.configure(**limit_options(settings))
    public.max_groups = settings.public_max_groups_per_tenant
    public.max_tenants = settings.public_max_tenants
    public.service.reconfigure(GroupSettings(default_slots=settings.default_slots))


def create_app(settings: Settings, service: LockService | None = None) -> web.Application:
    """The FleetLock application. Without ``service``, it opens the configured backend."""
    app = web.Application(
        middlewares=[answer_and_count], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    # Served on the admin (and [status]) listener, never on this one; see lockd.admin.
    app[METRICS] = Metrics(settings.groups)
    if service is None:
        app.cleanup_ctx.append(service_context(settings))
    else:
        app[SERVICE] = service
        service.observers.append(app[METRICS].observe)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if settings.public_enabled:
        tenant_api.add_routes(app)
    expect = expect_within(settings.max_body_bytes)
    # The two FleetLock paths as plain resources first: aiohttp finds those with one dict
    # lookup, where the catch-all below costs every request a regex match (issue #15).
    # Every other path (//v1/..., tenant prefixes, anything else) reaches the same handler
    # through the catch-all.
    for path in FLEETLOCK_PATHS:
        app.router.add_route("*", path, fleetlock, expect_handler=expect)
    app.router.add_route("*", "/{path:.*}", fleetlock, expect_handler=expect)
    return app
