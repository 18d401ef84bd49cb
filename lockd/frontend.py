"""The FleetLock HTTP frontend: ``create_app(settings) -> web.Application``.

Routes: ``POST [/prefix]/v1/pre-reboot``, ``POST [/prefix]/v1/steady-state`` (also with a
doubled slash), ``GET /healthz``, ``GET /readyz``. Every non-200 answer is a JSON
``{"kind", "value"}`` from :class:`lockd.errors.Kind`; nothing a client sends yields a 500.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from aiohttp import web

from lockd.config import Settings
from lockd.decisionlog import log_decision
from lockd.errors import Kind, LockdError
from lockd.fleetlock import PATH_RE, check_protocol_header, parse_body
from lockd.http import (
    SERVICE,
    SETTINGS,
    error_response,
    expect_within,
    json_errors,
    read_body,
)
from lockd.metrics import METRICS, Metrics, http_middleware
from lockd.policyrun import running_policy
from lockd.semaphore import Outcome
from lockd.service import LockService
from lockd.store import TimedBackend, open_store

# Encoded once: the 200 answers are a handful of constant bodies.
_OUTCOME_BODIES = {o: json.dumps({"outcome": o.value}).encode() for o in Outcome}


#: The GET-only routes beside FleetLock's, for a 405 (not the catch-all's 404) to other
#: methods.
PROBES = ("/healthz", "/readyz")


async def fleetlock(request: web.Request) -> web.Response:
    if request.path in PROBES:
        return error_response(
            LockdError(Kind.method_not_allowed, f"{request.path} takes GET only"),
            headers={"Allow": "GET,HEAD"},
        )
    match = PATH_RE.match(request.path)
    if match is None or match["prefix"]:
        # Tenant prefixes are not served by this listener.
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
    service = request.app[SERVICE]
    if match["op"] == "pre-reboot":
        answer = await service.try_lock(params.group, params.id)
        outcome = answer.outcome
        if not outcome.ok:  # full, paused, or refused by the group's reboot policy
            raise service.refusal(params.group, answer)
    else:
        outcome = await service.steady_state(params.group, params.id)
    return web.Response(body=_OUTCOME_BODIES[outcome], content_type="application/json")


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
        try:
            async with running_policy(settings, service, app[METRICS]):
                yield
        finally:
            await store.backend.close()

    return ctx


def create_app(settings: Settings, service: LockService | None = None) -> web.Application:
    """The FleetLock application. Without ``service``, it opens the configured backend."""
    app = web.Application(
        middlewares=[json_errors, http_middleware], client_max_size=settings.max_body_bytes
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
    app.router.add_route(
        "*", "/{path:.*}", fleetlock, expect_handler=expect_within(settings.max_body_bytes)
    )
    return app
