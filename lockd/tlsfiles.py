"""Native TLS for the FleetLock listener: one server context, its certificate reread on
SIGHUP.

A reload loads the new certificate and key into the same :class:`ssl.SSLContext`, so the
listener stays open and every handshake after the reload presents the new certificate;
connections already open keep theirs. A pair that does not load is refused and the running
certificate kept.
"""

from __future__ import annotations

import ssl


class TlsError(ValueError):
    """A certificate or key that cannot be loaded; the message says why."""


def _load(context: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsError(f"no such file: {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot load {cert} with {key}: {exc}") from None


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context with ``cert`` (PEM, chain included) and ``key``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key)
    return context


def reload(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load a new certificate and key into ``context``; on failure the old ones stay.

    The pair is tried on a scratch context first: a half-failed load must not leave the
    live one with a certificate that does not match its key."""
    _load(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), cert, key)
    _load(context, cert, key)
