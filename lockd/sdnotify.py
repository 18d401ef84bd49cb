"""Tell systemd how the service is doing: the ``sd_notify`` protocol over ``$NOTIFY_SOCKET``.

With ``Type=notify`` (deploy/lockd.service) systemd counts lockd as started only once it
says ``READY=1``, so units ordered after lockd, and ``systemctl start`` itself, wait until
the listeners are bound. The protocol is one datagram of ``KEY=VALUE`` lines to the
AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace).

Hand-written rather than a library (``sdnotify``, ``systemd-python``): it is a dozen lines of
the standard library, while the libraries add a dependency (systemd-python needs libsystemd
and a compiler) to every install, including containers and Kubernetes where nobody listens.

Without ``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``) every call does
nothing; a socket that cannot be reached never stops lockd, it is only reported as False.
"""

from __future__ import annotations

import os
import socket
import time


def notify(state: str) -> bool:
    """Send ``state`` (newline-separated ``KEY=VALUE`` lines); True if it was delivered."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False  # unset, or a transport we do not speak (vsock:)
    if address[0] == "@":
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def ready() -> bool:
    """The listeners are bound and lockd serves (also: a reload has finished)."""
    return notify("READY=1")


def reloading() -> bool:
    """A reload began; follow it with :func:`ready` when it is done.

    ``MONOTONIC_USEC`` is what ``Type=notify-reload`` (systemd 253+) requires beside
    ``RELOADING=1``; older systemd ignores it.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def stopping() -> bool:
    """lockd is shutting down: no new connections, requests in flight finishing."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """A one-line status shown by ``systemctl status lockd``."""
    return notify("STATUS=" + " ".join(text.splitlines()))
