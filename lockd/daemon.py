"""Running lockd as a process: the listeners it serves, signals (SIGTERM/SIGINT stop, SIGHUP
reload) and the start-up report. This is where the process is assembled: the FleetLock app
(:mod:`lockd.frontend`) and the admin and ``[status]`` apps (:mod:`lockd.admin`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from lockd import admin, sdnotify, tlsfiles
from lockd.config import ConfigError, Settings
from lockd.connections import ADMIN_MAX_CONNECTIONS, Listener, default_max_connections
from lockd.errors import LockdError
from lockd.frontend import configure_public, create_app
from lockd.http import SERVICE
from lockd.service import LockService
from lockd.tenancy import PUBLIC

log = logging.getLogger("lockd.daemon")


async def serve(
    settings: Settings, reload: Callable[[], Settings] | None = None, reuse_port: bool = False,
) -> None:
    """``reuse_port``: this process is one of several workers on the same ports
    (lockd.workers)."""
    app = create_app(settings)
    runners: list[web.AppRunner] = []
    listeners: list[Listener] = []
    # handler_cancellation: a request whose client has hung up is dropped from its
    # group's queue instead of being applied late. A late release is the dangerous one:
    # it could free a slot the same node took again since (see service.update).
    main = _runner(app, settings, handler_cancellation=True)
    await main.setup()  # opens the backend (cleanup_ctx)
    runners.append(main)
    # SIGTERM/SIGINT from here on: one sent as soon as "serving" is printed (a test, a
    # supervisor, systemctl stop) drains instead of killing the process.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        service = app[SERVICE]
        cap = settings.max_connections or default_max_connections()
        tls = tlsfiles.server_context(settings.tls_cert, settings.tls_key) if settings.tls \
            else None
        listeners.append(await _listen(main, settings.listen.host, settings.listen.port,
                                       "FleetLock", cap, tls, reuse_port))
        for name, extra, host, port in admin.listeners(settings, app):
            runner = _runner(extra, settings)
            await runner.setup()
            runners.append(runner)
            listeners.append(await _listen(runner, host, port, name, ADMIN_MAX_CONNECTIONS,
                                           reuse_port=reuse_port))
        print(f"lockd: serving (pid {os.getpid()}), backend {service.backend.describe()}",
              flush=True)
        try:
            await service.ready()
            await service.apply_configuration()
            sdnotify.status(f"serving, backend {service.backend.describe()}")
        except LockdError as exc:  # serve anyway: /readyz and 503s tell the truth
            log.warning("backend not reachable yet: %s", exc.value)
            sdnotify.status(f"serving, backend not reachable yet: {exc.value}")

        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, _reloader(reload, app, settings, tls))
        # Ready only now: a systemctl reload sent earlier would meet SIGHUP's default action.
        sdnotify.ready()
        await stop.wait()
        sdnotify.stopping()
        log.info("stopping: no new connections, finishing requests in flight")
    finally:
        for listener in listeners:  # no new connections anywhere
            await listener.close()
        # Extra listeners first, then the FleetLock listener, which closes the backend.
        for runner in reversed(runners):
            await runner.cleanup()
    log.info("stopped")


def _runner(app: web.Application, settings: Settings, **options: Any) -> web.AppRunner:
    # keepalive_timeout is aiohttp's idle bound, counted from the connection's start and
    # from each answer: silent connections, trickled headers and idle keep-alives end at
    # it (see lockd.connections).
    return web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        keepalive_timeout=settings.idle_timeout,
        **options,
    )


#: The configuration keys of each listener, for messages.
LISTENER_KEYS = {
    "FleetLock": "service.address/service.port",
    "admin": "admin.address/admin.port",
    "metrics": "status.address/status.port",
}


class ListenFailed(Exception):
    """A listener could not be opened; the message names its configuration keys."""


def listen_failed(host: str, port: int, name: str, exc: OSError) -> ListenFailed:
    return ListenFailed(
        f"cannot listen on {host}:{port} for the {name} listener: {exc.strerror or exc} "
        f"(check {LISTENER_KEYS.get(name, name)})"
    )


async def _listen(
    runner: web.AppRunner, host: str, port: int, name: str, cap: int,
    tls: ssl.SSLContext | None = None, reuse_port: bool = False,
) -> Listener:
    listener = Listener(runner, host, port, name=name, max_connections=cap, ssl=tls,
                        reuse_port=reuse_port)
    try:
        await listener.start()
    except OSError as exc:
        raise listen_failed(host, port, name, exc) from None
    for addr in listener.addresses():
        shown = f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
        # stdout, so `make run` and scripts see where it listens whatever the log format.
        scheme = "https" if tls is not None else "http"
        print(f"lockd: {name} listening on {scheme}://{shown}/", flush=True)
    return listener


#: Keys a reload applies; every other key needs a restart, and a reload says which changed.
#: The public mode's abuse limits reload; its pepper and limits_url (new counter storage
#: would start every count afresh) do not (frontend.configure_public).
RELOADABLE = (
    "default_slots", "groups", "strict_groups", "default_group_name", "tls_cert", "tls_key",
    "group_policy", "group_policies", "gates", "gate_cache_s", "sweep_interval",
    "public_trusted_proxies", "public_ip_create_rate", "public_ip_miss_rate",
    "public_tenant_rate", "public_ip_rate", "public_max_groups_per_tenant",
    "public_max_tenants",
)


def _needs_restart(old: Settings, new: Settings) -> list[str]:
    return sorted(
        f.name for f in dataclasses.fields(Settings)
        if f.name not in (*RELOADABLE, "source") and getattr(old, f.name) != getattr(new, f.name)
    )


def _reloader(
    reload: Callable[[], Settings], app: web.Application, running: Settings,
    tls: ssl.SSLContext | None = None,
) -> Callable[[], None]:
    current = [running]

    def on_sighup() -> None:
        sdnotify.reloading()
        try:
            settings = reload()
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            sdnotify.status(f"reload refused, running configuration kept: {exc}")
            sdnotify.ready()
            return
        if tls is not None and settings.tls:
            try:
                tlsfiles.reload(tls, settings.tls_cert, settings.tls_key)
                log.info("TLS certificate reloaded from %s", settings.tls_cert)
            except tlsfiles.TlsError as exc:
                log.error("TLS certificate not reloaded, keeping the running one: %s", exc)
        service = app[SERVICE]
        restart = _needs_restart(current[0], settings)
        current[0] = settings
        service.reconfigure(settings.group_settings())
        service.gates.reconfigure(settings.gates, settings.gate_cache_s)
        service.sweep_interval = settings.sweep_interval
        public = app.get(PUBLIC)
        if public is not None:  # limits, quotas, and default_slots for every tenant group
            configure_public(public, settings)
        task = asyncio.get_running_loop().create_task(_apply(service))
        _background.add(task)
        task.add_done_callback(_background.discard)
        log.info(
            "configuration reloaded from %s: applied default_slots=%d groups=%s "
            "strict_groups=%s%s%s",
            settings.source,
            settings.default_slots,
            dict(settings.groups),
            settings.strict_groups,
            "" if public is None else (
                f" public ip_rate={settings.public_ip_rate} "
                f"ip_create_rate={settings.public_ip_create_rate} "
                f"ip_miss_rate={settings.public_ip_miss_rate} "
                f"tenant_rate={settings.public_tenant_rate} "
                f"max_groups_per_tenant={settings.public_max_groups_per_tenant} "
                f"max_tenants={settings.public_max_tenants} "
                f"trusted_proxies={list(settings.public_trusted_proxies)}"),
            f"; changed but not applied until a restart: {', '.join(restart)}"
            if restart else "",
        )
        sdnotify.ready()

    return on_sighup


_background: set[asyncio.Task[None]] = set()


async def _apply(service: LockService) -> None:
    try:
        await service.apply_configuration()
    except LockdError as exc:
        log.warning("reloaded slots not yet written (%s); groups apply them at next use",
                    exc.value)


def run(
    settings: Settings, reload: Callable[[], Settings] | None = None, reuse_port: bool = False,
) -> int:
    try:
        import uvloop  # optional speed-up

        runner: Callable[..., None] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(settings, reload, reuse_port))
    except ListenFailed as exc:
        print(f"lockd: {exc}", file=sys.stderr)
        return 1
    return 0
