"""The reboot policy's moving parts around a running service: the health gates' client, the
notification queue and its delivery tasks, and the periodic sweep (expiry, stale reports).
Opened with the FleetLock application (:func:`lockd.frontend.service_context`), closed with
it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from lockd.config import Settings
from lockd.metrics import Metrics
from lockd.notify import Notifier
from lockd.service import LockService, stop


@contextlib.asynccontextmanager
async def running_policy(
    settings: Settings, service: LockService, metrics: Metrics
) -> AsyncIterator[Notifier]:
    service.gates.reconfigure(settings.gates, settings.gate_cache_s)
    service.gates.observe = metrics.observe_gate
    notifier = Notifier(settings.notify, metrics.observe_notification)
    await notifier.start()
    service.observers.append(notifier)
    service.sweep_interval = settings.sweep_interval
    sweeper = asyncio.get_running_loop().create_task(service.run_sweeps())
    try:
        yield notifier
    finally:
        await stop(sweeper)
        await notifier.close()
        await service.gates.close()
