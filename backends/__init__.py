"""Storage backends, picked by URL scheme.

``open_backend("sqlite:///var/lib/lockd/lockd.db")`` returns a backend; the caller never
imports a driver. Each scheme's module is imported only when that scheme is used.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from backends.base import Backend, BackendError, BackendUnavailable

__all__ = ["SCHEMES", "Backend", "BackendError", "BackendUnavailable", "open_backend"]

#: scheme -> "module:factory"; the factory takes the URL and returns a Backend.
SCHEMES: dict[str, str] = {
    "memory": "backends.memory:from_url",
    "sqlite": "backends.sqlite:from_url",
    "redis": "backends.redis:from_url",
    "rediss": "backends.redis:from_url",
    "unix": "backends.redis:from_url",
    "redis+sentinel": "backends.redis:from_url",
    "etcd": "backends.etcd3:from_url",
    "etcd2": "backends.etcd2:from_url",
}


class InvalidBackendURL(ValueError):
    """The URL names no backend, or a backend cannot use it. The message says why."""


def open_backend(url: str) -> Backend:
    """Create (not yet connect) the backend a URL names."""
    scheme = urlsplit(url).scheme.lower()
    target = SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise InvalidBackendURL(
            f"unknown backend scheme {scheme + '://' if scheme else url!r}; use one of {known}"
        )
    module_name, _, factory = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise InvalidBackendURL(f"backend {scheme}:// is not available: {exc}") from exc
    return getattr(module, factory)(url)
