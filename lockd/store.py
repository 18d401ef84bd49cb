"""A store as lockd sees it: a backend and the layout its keys are written in.

``open_store(url)`` reads the one option that is lockd's, not the backend's (``layout=``),
and hands the rest of the URL to :func:`lockd.backends.open_backend`. Which layouts a
scheme can hold is decided here: ``etcd2://`` is locksmith's store and holds only its
layout; ``etcd://`` holds lockd's or airlock's; every other store holds lockd's own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from lockd.backends import (
    Backend,
    CasResult,
    ChangeSink,
    InvalidBackendURL,
    Version,
    open_backend,
)
from lockd.layouts import LAYOUTS, Layout

T = TypeVar("T")

#: scheme -> the layouts it can hold, the default first.
SCHEME_LAYOUTS: dict[str, tuple[str, ...]] = {
    "etcd": ("native", "airlock"),
    "etcd2": ("locksmith",),
}
DEFAULT_LAYOUTS = ("native",)


@dataclass(frozen=True)
class Store:
    backend: Backend
    layout: Layout

    def describe(self) -> str:
        return f"{self.backend.describe()}, {self.layout.name} layout"


def split_layout(url: str) -> tuple[str, str]:
    """``(url without the layout option, layout name)``; refuses a layout the scheme
    cannot hold."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    allowed = SCHEME_LAYOUTS.get(scheme, DEFAULT_LAYOUTS)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [v.lower() for k, v in query if k == "layout"]
    name = names[-1] if names else allowed[0]
    if name not in allowed:
        raise InvalidBackendURL(
            f"{scheme} URL option layout={name!r}: use {' or '.join(allowed)}"
        )
    if not names:
        return url, name
    # Only the query changes: urlunsplit would drop the empty "//" of sqlite:///path.
    base, _, rest = url.partition("?")
    _, hash_, fragment = rest.partition("#")
    kept = urlencode([(k, v) for k, v in query if k != "layout"])
    return base + (f"?{kept}" if kept else "") + hash_ + fragment, name


def open_store(url: str) -> Store:
    """Create (not yet connect) the store a URL names."""
    backend_url, name = split_layout(url)
    return Store(open_backend(backend_url), LAYOUTS[name]())


Observe = Callable[[str, float, bool], None]


class TimedBackend(Backend):
    """A backend that reports the duration and failure of every operation of another one.

    ``observe(operation, seconds, ok)`` is called after each call; a timeout that cancels
    the call counts as a failure.
    """

    def __init__(self, inner: Backend, observe: Observe) -> None:
        self.inner = inner
        self._observe = observe
        self.scheme = inner.scheme

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        ok = False
        try:
            result = await call
            ok = True
            return result
        finally:
            self._observe(operation, time.perf_counter() - started, ok)

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        return await self._timed("get", self.inner.get(key))

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        call = self.inner.compare_and_set(key, value, expected)
        return await self._timed("compare_and_set", call)

    async def compare_and_delete(self, key: str, expected: Version) -> CasResult:
        call = self.inner.compare_and_delete(key, expected)
        return await self._timed("compare_and_delete", call)

    async def scan(self, prefix: str) -> list[str]:
        return await self._timed("scan", self.inner.scan(prefix))

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    @property  # type: ignore[override]
    def has_feed(self) -> bool:
        return self.inner.has_feed

    async def watch(self, prefix: str, sink: ChangeSink) -> None:
        # Not timed: a watch lasts as long as the process.
        await self.inner.watch(prefix, sink)

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> str:
        return self.inner.describe()

    def __getattr__(self, name: str) -> Any:
        # Backend-specific attributes (tests and the admin API read a few).
        return getattr(self.inner, name)
