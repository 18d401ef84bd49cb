"""HTTP pieces every lockd listener shares: typed app keys, the JSON error middleware, and
reading a request body within a size limit."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from lockd.config import Settings
from lockd.errors import Kind, LockdError
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
