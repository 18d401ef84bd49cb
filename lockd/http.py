"""HTTP pieces every lockd listener shares: typed app keys, the JSON error middleware,
reading a request body within a size limit, and the connection handler that answers
malformed HTTP with a JSON error and one rate-limited log line."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from lockd.config import Settings
from lockd.errors import Kind, LockdError
from lockd.service import LockService
from lockd.tenancy import redact

log = logging.getLogger("lockd.http")

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", LockService)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    error: LockdError, headers: dict[str, str] | None = None, status: int | None = None
) -> web.Response:
    # What web.json_response sends (same body, same Content-Type), from a memo.
    # _value_: what Enum's (Python-level) value property returns.
    body = _error_body(error.kind._value_, error.value)
    if headers is None:
        # Copied from a prebuilt header set, which costs aiohttp less than content_type
        # and charset (issue #15); the same bytes on the wire (tests/test_wire.py).
        return web.Response(body=body, status=status or error.status, headers=_JSON_HEADERS)
    return web.Response(body=body, status=status or error.status, headers=headers,
                        content_type="application/json", charset="utf-8")


#: Never changed: aiohttp copies a response's headers into its own CIMultiDict.
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


@functools.lru_cache(maxsize=256)
def _error_body(kind: str, value: str) -> bytes:
    """A storm's refusals are a handful of identical bodies: encoded once each (bounded,
    since a value may quote what a client sent)."""
    return json.dumps({"kind": kind, "value": value}).encode()


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON ``{kind, value}``; never let a client cause a 500."""
    try:
        return await handler(request)
    except Exception as exc:
        return error_for(request, exc)


def error_for(request: web.Request, exc: Exception) -> web.Response:
    """The JSON ``{kind, value}`` answer to an exception a handler raised (json_errors'
    and the FleetLock listener's middleware, lockd.frontend); raises it again where it is
    not an error (an HTTPException below 400, a redirect)."""
    if isinstance(exc, LockdError):
        return error_response(exc, headers=exc.headers)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return error_response(
            LockdError(Kind.method_not_allowed, f"{request.method} is not allowed here"),
            headers={"Allow": ",".join(sorted(exc.allowed_methods))},
        )
    if isinstance(exc, web.HTTPNotFound):
        return error_response(LockdError(Kind.not_found, "no such endpoint"))
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(LockdError(Kind.body_too_large, "request body is too large"))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        kind = Kind.invalid_request if exc.status < 500 else Kind.internal_error
        return web.json_response({"kind": kind.value, "value": exc.reason}, status=exc.status)
    log.exception("unexpected error serving %s %s", request.method, redact(request.path),
                  exc_info=exc)
    return error_response(LockdError(Kind.internal_error, "internal error"))


async def read_body(request: web.Request, limit: int, timeout: float = 15.0) -> bytes:
    """The whole body as bytes, however it arrives (one segment or many, Content-Length or
    chunked), refusing more than ``limit`` without reading it all: a Content-Length above
    the limit is refused before any of the body is read, a chunked body as soon as what
    arrived passes the limit. A body that takes longer than ``timeout`` seconds is refused
    (408), so a client cannot hold a connection by trickling it."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    pieces: list[bytes] = []
    size = 0
    try:
        if request.content.is_eof():
            # The whole body came with the head (a FleetLock body is one small segment):
            # take what is buffered, without arming a timer for a wait that cannot happen.
            # With a Content-Length (at most the limit, checked above) the whole buffer:
            # aiohttp returns its one piece as is, where read_nowait(n) loops and joins.
            body = request.content.read_nowait(-1 if length is not None else limit + 1)
            if len(body) > limit:
                raise _too_large(limit)
            return body
        async with asyncio.timeout(timeout):
            # read(n) returns what is buffered (at most n bytes), b"" only at the end.
            while piece := await request.content.read(limit + 1 - size):
                pieces.append(piece)
                size += len(piece)
                if size > limit:
                    raise _too_large(limit)
    except TimeoutError:
        raise LockdError(
            Kind.request_timeout, f"the request body did not arrive within {timeout:g}s"
        ) from None
    except web.RequestPayloadError as exc:  # broken chunked framing, see _fail_open_body
        raise LockdError(Kind.invalid_request, f"malformed request body: {exc}") from None
    except ConnectionError:  # the client went away; nobody reads the answer
        raise LockdError(Kind.invalid_request, "connection lost while reading the body") from None
    return b"".join(pieces)


def _too_large(limit: int) -> LockdError:
    # Built when needed: an exception and its message on every request cost a body that
    # fits (nearly all of them) a few microseconds for nothing (issue #15).
    return LockdError(Kind.body_too_large, f"request body is larger than {limit} bytes")


def expect_within(limit: int) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """An ``Expect: 100-continue`` handler that refuses a body over ``limit`` before the
    client sends it: the 413 goes out instead of ``100 Continue``."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.version < (1, 1):
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            return error_response(LockdError(Kind.invalid_request, "unsupported Expect"),
                                  status=417)
        if request.content_length is not None and request.content_length > limit:
            resp = error_response(_too_large(limit))
            resp.force_close()  # the body that may still come is not read
            return resp
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    return expect


# Malformed HTTP
#
# aiohttp answers a request it cannot parse (a header over 8190 bytes, a bad chunk size, a
# garbage request line, TLS on the HTTP port) from RequestHandler.handle_error, before any
# application, middleware or signal sees it: a text/plain 400 and an ERROR with a traceback
# on the aiohttp.server logger, for every attempt. FleetLock clients need a JSON
# {kind, value} on every error, and a client must not be able to fill the log.
#
# handle_error is the one place that both writes the answer and logs, so lockd overrides it
# in a RequestHandler subclass, LockdRequestHandler. A logging filter on aiohttp.server (or
# the handler's `logger` argument) could quieten the log but not change the answer; the
# access logger runs after the answer is sent. aiohttp has no option for the handler class
# (aio-libs/aiohttp#3287), so lockd's listeners create their protocols with
# request_handler() below, which builds the subclass exactly as web.Server.__call__ builds
# aiohttp's own (lockd.connections.Listener calls it).


def _reason(exc: BaseException | None, message: str | None) -> str:
    """aiohttp's multi-line parser message (with a ``^`` pointer line) as one short line."""
    text = message or (exc.message if isinstance(exc, HttpProcessingError) else "") or str(exc)
    words = " ".join(
        line.strip() for line in text.splitlines() if line.strip() and line.strip() != "^"
    )
    words = words.replace("Bad status line: ", "")
    return (words[:197] + "...") if len(words) > 200 else (words or "unparsable request")


class RateLimitedLog:
    """WARNING lines that a client cannot turn into a flood: at most one per ``every``
    seconds; the ones held back in between are counted and reported in one line when the
    period ends."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what  # "malformed HTTP requests", for the summary line
        self.every = every
        self.clock = clock
        self._quiet_until = float("-inf")
        self._held = 0
        self._last = ""
        self._timer: asyncio.TimerHandle | None = None

    def warning(self, line: str) -> None:
        now = self.clock()
        if now >= self._quiet_until:
            self.logger.warning("%s", line)
            self._quiet_until = now + self.every
            return
        self._held += 1
        self._last = line
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a unit test): reported with the next period
                return
            self._timer = loop.call_later(self._quiet_until - now, self.flush)

    def flush(self) -> None:
        """Report what was held back (called when the quiet period ends)."""
        self._timer = None
        if not self._held:
            return
        held, self._held = self._held, 0
        verb = "was" if held == 1 else "were"
        noun = self.what if held != 1 else self.what.removesuffix("s")
        self.logger.warning(
            "%d more %s %s held back in the last %gs; the last: %s",
            held, noun, verb, self.every, self._last,
        )
        self._quiet_until = self.clock() + self.every


malformed_log = RateLimitedLog(log, "malformed HTTP requests")

try:  # what aiohttp queues for a request it could not parse; see data_received
    from aiohttp.web_protocol import _ErrInfo
except ImportError:  # pragma: no cover - a future aiohttp; the rescue is then skipped
    _ErrInfo = None  # type: ignore[assignment,misc]


class OpenConnections:
    """How many connections a listener holds open, kept by its handlers as they open and
    close: an O(1) count for the cap, where aiohttp's ``Server.connections`` builds a list of
    every open connection on each call (issue #15: with 10,000 open, twice per new
    connection, during a boot ramp of 1,000 new connections a second)."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = 0


class LockdRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering malformed HTTP with lockd's JSON error."""

    __slots__ = ("_counted",)

    def __init__(self, *args: Any, counted: OpenConnections | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._counted = counted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Counted from here to connection_lost, the pair asyncio guarantees (a TLS
        # handshake that fails calls neither).
        if self._counted is not None:
            self._counted.open += 1
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted is not None:
            self._counted.open -= 1
            self._counted = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            # Not the client's doing (an exception that escaped the middlewares, a handler
            # timeout): logged by aiohttp as before, traceback included; the client still
            # gets JSON.
            super().handle_error(request, status, exc, message)
            kind, value = Kind.internal_error, "internal error"
        else:
            value = _reason(exc, message)
            malformed_log.warning(f"malformed HTTP request from {request.remote}: {value}")
            if request.writer.output_size > 0:  # as aiohttp: too late for an answer
                raise ConnectionError("an answer was already sent")
            kind, value = Kind.invalid_request, f"malformed HTTP request: {value}"
        resp = web.json_response({"kind": kind.value, "value": value}, status=status)
        resp.force_close()  # the parser cannot find the next request after this one
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # After answering a request whose body could not be decoded (a Content-Encoding
        # that does not decode, broken chunks), aiohttp drains the rest of the body, meets
        # the same error again and logs it with a traceback. The client already got its
        # 400: one short, rate-limited line instead.
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError):
            peer = self.transport.get_extra_info("peername") if self.transport else None
            remote = peer[0] if isinstance(peer, tuple) else "unknown"
            malformed_log.warning(
                f"malformed HTTP request from {remote}: {_reason(exc, None)} (in the body)"
            )
            return
        super().log_exception(*args, **kw)

    def data_received(self, data: bytes) -> None:
        messages = self._messages
        queued = len(messages)
        super().data_received(data)
        # Checked here, not in the method: every request's head is queued this way.
        if (len(messages) > queued and _ErrInfo is not None
                and isinstance(messages[-1][0], _ErrInfo)):
            self._fail_open_body()

    def _fail_open_body(self) -> None:
        """A parse error inside a body whose head was already handed to a handler.

        aiohttp's C parser then drops that body's stream without ending it (the pure Python
        parser sets an error on it) and queues the error as the next request: the handler
        waits for the rest of the body forever and the client for an answer. Deliver the
        error to the stream instead, so that the handler answers 400, and close afterwards.
        """
        error, _ = self._messages[-1]
        streams = [payload for _, payload in list(self._messages)[:-1]]
        if self._current_request is not None:
            streams.insert(0, self._current_request.content)
        streams = [s for s in streams if not s.is_eof()]
        if not streams:
            return  # an error in a request's head: handle_error answers it
        self._messages.pop()
        reason = _reason(error.exc, error.message)
        peer = self.transport.get_extra_info("peername") if self.transport else None
        remote = peer[0] if isinstance(peer, tuple) else "unknown"
        malformed_log.warning(f"malformed HTTP request from {remote}: {reason} (in the body)")
        streams[-1].set_exception(web.RequestPayloadError(reason))
        streams[-1].feed_eof()  # ended: no lingering read of a body that cannot end
        self.close()


def request_handler(
    server: web.Server, counted: OpenConnections | None = None
) -> LockdRequestHandler:
    """A connection handler for ``server`` (a runner's ``runner.server``): what
    ``server()``, aiohttp's protocol factory, returns, but lockd's subclass. Use it wherever
    a listener creates its protocols; ``counted`` counts the connection while it is open."""
    # web.Server.__call__ does exactly this with aiohttp's class: the handler options the
    # runner was given (access_log, keepalive_timeout, max_line_size...) are its _kwargs.
    return LockdRequestHandler(server, loop=asyncio.get_running_loop(), counted=counted,
                               **server._kwargs)
