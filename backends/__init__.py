"""Storage backends, picked by URL scheme; installed as ``lockd.backends``.

``open_backend("sqlite:///var/lib/lockd/lockd.db")`` returns a backend; the caller never
imports a driver. Each scheme's module is imported only when that scheme is used, and a
driver that is not installed is named with the extra that brings it.

This package stores versioned bytes and imports nothing from the rest of lockd (a test walks
its imports); what the bytes mean lives in ``lockd.layouts``.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from .base import (
    Backend,
    BackendError,
    BackendUnavailable,
    CasResult,
    ChangeSink,
    InvalidBackendURL,
    MissingDriver,
    ValueTooLarge,
    Version,
)

__all__ = [
    "SCHEMES",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "CasResult",
    "ChangeSink",
    "InvalidBackendURL",
    "MissingDriver",
    "ValueTooLarge",
    "Version",
    "open_backend",
]

#: scheme -> (module, extra that installs its driver or None). Each module has
#: ``from_url(url) -> Backend``.
SCHEMES: dict[str, tuple[str, str | None]] = {
    "memory": ("memory", None),
    "sqlite": ("sqlite", None),
    "redis": ("redis", "redis"),
    "rediss": ("redis", "redis"),
    "unix": ("redis", "redis"),
    "redis+sentinel": ("redis", "redis"),
    "redis+cluster": ("redis_cluster", "redis"),
    "rediss+cluster": ("redis_cluster", "redis"),
    "etcd": ("etcd3", None),
    "etcd2": ("etcd2", None),
}


def open_backend(url: str) -> Backend:
    """Create (not yet connect) the backend a URL names."""
    scheme = urlsplit(url).scheme.lower()
    target = SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise InvalidBackendURL(
            f"unknown backend scheme {scheme + '://' if scheme else url!r}; use one of {known}"
        )
    module_name, extra = target
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as exc:
        if extra is None or exc.name is None or exc.name.startswith(__name__):
            raise
        raise MissingDriver(
            f"backend {scheme}:// needs the {exc.name!r} driver, which is not installed; "
            f"install it with: pip install 'lockd[{extra}]'"
        ) from exc
    return module.from_url(url)
