"""The FleetLock HTTP frontend: ``create_app(settings) -> web.Application``.

Routes: ``POST [/prefix]/v1/pre-reboot``, ``POST [/prefix]/v1/steady-state`` (also with a
doubled slash), ``GET /healthz``, ``GET /readyz``. Every non-200 answer is a JSON
``{"kind", "value"}`` from :class:`lockd.errors.Kind`; nothing a client sends yields a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from backends import open_backend
from lockd import eventlog
from lockd.config import Settings
from lockd.errors import Kind, LockdError
from lockd.fleetlock import PATH_RE, check_protocol_header, parse_body
from lockd.metrics import METRICS, Metrics, TimedBackend, http_middleware
from lockd.semaphore import Outcome
from lockd.service import LockService

log = logging.getLogger("lockd.http")

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", LockService)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: LockdError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error.as_json(), status=error.status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON ``{kind, value}``; never let a client cause a 500."""
    try:
        return await handler(request)
    except LockdError as exc:
        return error_response(exc)
    except web.HTTPMethodNotAllowed as exc:
        return error_response(
            LockdError(Kind.method_not_allowed, f"{request.method} is not allowed here"),
            headers={"Allow": ",".join(sorted(exc.allowed_methods))},
        )
    except web.HTTPNotFound:
        return error_response(LockdError(Kind.not_found, "no such endpoint"))
    except web.HTTPRequestEntityTooLarge:
        return error_response(LockdError(Kind.body_too_large, "request body is too large"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = Kind.invalid_request if exc.status < 500 else Kind.internal_error
        return web.json_response({"kind": kind.value, "value": exc.reason}, status=exc.status)
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(LockdError(Kind.internal_error, "internal error"))


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body as bytes, refusing more than ``limit`` without reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise LockdError(Kind.body_too_large, f"request body is larger than {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise LockdError(Kind.body_too_large, f"request body is larger than {limit} bytes")
    return body


# Encoded once: the 200 answers are a handful of constant bodies.
_OUTCOME_BODIES = {o: json.dumps({"outcome": o.value}).encode() for o in Outcome}


async def fleetlock(request: web.Request) -> web.Response:
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
    params = parse_body(await read_body(request, settings.max_body_bytes))
    service = request.app[SERVICE]
    if match["op"] == "pre-reboot":
        outcome = await service.pre_reboot(params.group, params.id)
    else:
        outcome = await service.steady_state(params.group, params.id)
    if outcome is Outcome.FULL:
        raise LockdError(
            Kind.failed_lock_semaphore_full,
            "semaphore currently full, all slots are locked already",
        )
    if outcome is Outcome.PAUSED:
        raise LockdError(
            Kind.failed_lock_group_paused,
            f"group {params.group!r} is paused by an operator; no new reboots",
        )
    return web.Response(body=_OUTCOME_BODIES[outcome], content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    await request.app[SERVICE].ready()
    return web.json_response({"status": "ready"})


def service_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """Open the backend and the service with the app, close them with it."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        backend = open_backend(settings.backend_url)
        await backend.open()
        # The service sees the backend through a timer, for lockd_backend_* metrics.
        timed = TimedBackend(backend, app[METRICS])
        service = LockService(timed, settings.group_settings(), timeout=settings.timeout)
        service.observers.append(eventlog.log_decision)
        service.observers.append(app[METRICS].observe)
        app[SERVICE] = service
        try:
            yield
        finally:
            await backend.close()

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
    app.router.add_route("*", "/{path:.*}", fleetlock)
    return app
