"""``lockd serve --workers N``: N processes serving the same ports over one shared store.

The process started (by systemd, a shell, a container runtime) becomes the **supervisor**.
It serves nothing itself; it

- holds each listener's port (bound, not listening, ``SO_REUSEPORT``), so that port 0
  resolves once for all workers, a port taken by anything else fails here with the
  key named (as a single process does), and the port stays lockd's while a worker restarts;
- starts the workers: ``lockd serve`` with the same arguments, the resolved ports and
  ``$LOCKD_WORKER``; each listens with ``SO_REUSEPORT`` and the kernel spreads new
  connections over them. Every worker reads the configuration itself, decides on the store
  with compare-and-set like any replica, and runs its own sweeps: they are safe to run N
  times (a CAS decides each expiry once) and need no leader that could die;
- is each worker's systemd: a worker's ``NOTIFY_SOCKET`` is the supervisor's socket, so
  lockd.daemon sends READY/RELOADING/STOPPING as it does alone; the supervisor tells the
  real systemd READY once every worker is ready (and after a reload, once every worker has
  reloaded), STOPPING when it stops;
- forwards SIGHUP (reload) and SIGTERM/SIGINT (graceful drain) to every worker, and exits
  0 once all have stopped cleanly;
- restarts a worker that dies, after a back-off (0.5 s, doubling to 30 s for a worker that
  keeps dying within 30 s of its start), forever: the other workers keep serving. A worker
  that exits before the first READY of all means the server cannot start: the supervisor
  stops the others and exits with that worker's status (its message, naming the key, is on
  stderr);
- relays every worker's stdout and stderr as whole lines, so lines from two workers never
  interleave mid-line whatever stderr is (a pipe, the journal, a file);
- gives the workers a private PROMETHEUS_MULTIPROC_DIR (lockd.metrics), removed when it
  exits, and marks dead workers there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from prometheus_client.multiprocess import mark_process_dead

from lockd import sdnotify
from lockd.config import Settings
from lockd.daemon import ListenFailed, listen_failed

log = logging.getLogger("lockd.workers")

#: Set in a worker's environment: JSON {"index", "parent", "ports"}.
ENV = "LOCKD_WORKER"
#: A worker that lived this long before dying is restarted after the shortest back-off.
STABLE_S = 30.0
BACKOFF_S, BACKOFF_MAX_S = 0.5, 30.0
#: The start-up report lines a worker prints (lockd.daemon); the supervisor prints them once.
REPORT_PREFIXES = (b"lockd: serving (pid ",)
LISTENING = b" listening on "


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    parent: int
    #: configuration keys the supervisor resolved (the held ports), applied over the flags
    overrides: dict[str, int]


def worker_spec() -> WorkerSpec | None:
    """This process's place among the workers, or None outside a supervisor."""
    text = os.environ.get(ENV)
    if not text:
        return None
    doc = json.loads(text)
    return WorkerSpec(int(doc["index"]), int(doc["parent"]), dict(doc["ports"]))


def die_with_supervisor(spec: WorkerSpec) -> None:
    """Get SIGTERM (a graceful drain) when the supervisor dies, even by SIGKILL.

    ``prctl(PR_SET_PDEATHSIG)`` through ctypes: the standard library has no prctl, and the
    python-prctl package needs a compiler and libcap headers for one call.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != spec.parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


# --- ports ------------------------------------------------------------------------------


def listeners_of(settings: Settings) -> list[tuple[str, str, str, int]]:
    """(listener name, port key, host, port) of every listener the workers open."""
    found = [("FleetLock", "service.port", settings.listen.host, settings.listen.port)]
    if settings.admin_listen is not None:
        a = settings.admin_listen
        found.append(("admin", "admin.port", a.host, a.port))
    if settings.metrics_listen is not None:
        m = settings.metrics_listen
        found.append(("metrics", "status.port", m.host, m.port))
    return found


def hold_port(name: str, host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT and not listening: it takes no
    connections, but keeps the port for the workers. Raises ListenFailed."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        # A plain bind first: it fails if anything holds the port, including another lockd's
        # workers (SO_REUSEPORT alone would let this server join theirs silently).
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)
            addr = (addr[0], probe.getsockname()[1], *addr[2:])  # port 0 resolved
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError as exc:
        raise listen_failed(host, port, name, exc) from None
    return sock


# --- the supervisor ---------------------------------------------------------------------


@dataclass(eq=False)  # compared by identity
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready: bool = False
    reported: bool = False  # its start-up report has been read from its stdout
    crashes: int = 0  # deaths in a row, each within STABLE_S of its start
    report: list[bytes] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0


class Supervisor:
    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.workers = [Worker(i) for i in range(settings.workers)]
        self.held: list[socket.socket] = []
        self.ports: dict[str, int] = {}
        self.dir = ""
        self.serving = False
        self.stopping = False
        self.failed: int | None = None
        self.reloading: set[int] = set()  # pids that have not finished the reload yet
        self.changed = asyncio.Event()  # a worker became ready or exited
        self.stop = asyncio.Event()
        self.restarts: set[asyncio.TimerHandle] = set()
        self.spawning: set[asyncio.Task[None]] = set()

    # -- start and stop

    async def run(self) -> int:
        for name, key, host, port in listeners_of(self.settings):
            sock = hold_port(name, host, port)
            self.held.append(sock)
            self.ports[key] = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="lockd-workers-")
        metrics = os.path.join(self.dir, "metrics")
        os.mkdir(metrics)
        self.metrics_dir = metrics
        self.notify_path = os.path.join(self.dir, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the sender's pid
        notify.bind(self.notify_path)
        loop = asyncio.get_running_loop()
        loop.add_reader(notify.fileno(), self._on_notify, notify)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        try:
            for w in self.workers:
                await self._spawn(w)
            while not self.stopping and self.failed is None and not all(
                    w.ready and w.reported for w in self.workers):
                self.changed.clear()
                await self.changed.wait()
            if self.failed is None and not self.stopping:
                self._report_serving()
                await self.stop.wait()
            return await self._shutdown()
        finally:
            loop.remove_reader(notify.fileno())
            notify.close()
            for sock in self.held:
                sock.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _report_serving(self) -> None:
        self.serving = True
        first = self.workers[0].report
        backend = next((line.partition(b", backend ")[2] for line in first
                        if line.startswith(REPORT_PREFIXES)), b"").decode(errors="replace")
        out = sys.stdout.buffer
        for line in first:
            if LISTENING in line:
                out.write(line)
        pids = ", ".join(str(w.pid) for w in self.workers)
        out.write(f"lockd: serving (pid {os.getpid()}) with {len(self.workers)} workers "
                  f"(pids {pids}), backend {backend.strip()}\n".encode())
        out.flush()
        sdnotify.status(f"serving with {len(self.workers)} workers, backend {backend.strip()}")
        sdnotify.notify(f"READY=1\nMAINPID={os.getpid()}")

    async def _shutdown(self) -> int:
        """Stop every worker (SIGTERM: each drains as lockd.daemon does) and wait."""
        self.stopping = True
        for handle in self.restarts:
            handle.cancel()
        if self.serving:
            sdnotify.stopping()
        signalled = [w for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for w in signalled:  # not one waiting to be restarted: its death was logged already
            w.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        codes = []
        for w in self.workers:
            if w in signalled:
                code = await w.proc.wait()  # type: ignore[union-attr]
                # A worker stopped while starting dies of the SIGTERM it had no handler for.
                codes.append(0 if code == -signal.SIGTERM else code)
            for task in w.tasks:  # the relays end at the worker's EOF
                await task
        if self.failed is not None:
            return self.failed
        log.info("stopped: every worker has stopped")
        return 0 if all(c == 0 for c in codes) else 1

    def _on_stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            log.info("stopping: telling %d workers to finish their requests and stop",
                     len(self.workers))
            self.stop.set()
            self.changed.set()

    def _on_reload(self) -> None:
        if self.stopping:
            return
        # A worker not yet ready has no SIGHUP handler yet (the signal would kill it); it
        # reads the current configuration as it starts anyway.
        ready = [w for w in self.workers if w.ready and w.proc and w.proc.returncode is None]
        sdnotify.reloading()
        self.reloading = {w.pid for w in ready}
        log.info("reload: passing SIGHUP to %d workers", len(ready))
        for w in ready:
            w.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        self._reload_done()

    def _reload_done(self) -> None:
        if not self.reloading and self.serving and not self.stopping:
            sdnotify.ready()

    # -- workers

    async def _spawn(self, w: Worker) -> None:
        env = {
            **os.environ,
            ENV: json.dumps({"index": w.index, "parent": os.getpid(), "ports": self.ports}),
            "NOTIFY_SOCKET": self.notify_path,
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
        }
        w.ready, w.reported, w.report, w.started = False, False, [], time.monotonic()
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lockd", *self.argv, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert w.proc.stdout is not None and w.proc.stderr is not None
        w.tasks = [
            asyncio.create_task(self._relay_stdout(w, w.proc.stdout)),
            asyncio.create_task(relay_lines(w.proc.stderr, sys.stderr.buffer)),
            asyncio.create_task(self._watch(w, w.proc)),
        ]
        if self.stopping:  # the stop came while it was being started
            w.proc.send_signal(signal.SIGTERM)

    async def _relay_stdout(self, w: Worker, stream: asyncio.StreamReader) -> None:
        """stdout is a few lines: the start-up report is kept (printed once for all), the
        rest passed on."""
        out = sys.stdout.buffer
        async for line in stream:
            if not w.reported and (line.startswith(REPORT_PREFIXES) or LISTENING in line):
                w.report.append(line)
                if line.startswith(REPORT_PREFIXES):  # the last line of the report
                    w.reported = True
                    self._ready(w, report=True)
                continue
            out.write(line)
            out.flush()

    async def _watch(self, w: Worker, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        with contextlib.suppress(OSError):
            mark_process_dead(proc.pid, self.metrics_dir)
        self.reloading.discard(proc.pid)
        self._reload_done()
        self.changed.set()
        if self.stopping:
            return
        if not self.serving:
            if self.failed is None:
                log.error("worker %d (pid %d) %s before serving; stopping the others",
                          w.index, proc.pid, _how(code))
                self.failed = code if code > 0 else 1
            return
        lived = time.monotonic() - w.started
        w.crashes = w.crashes + 1 if lived < STABLE_S else 1
        delay = backoff(w.crashes)
        log.error("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s "
                  "(%d time(s) in a row); the other workers keep serving",
                  w.index, proc.pid, _how(code), lived, delay, w.crashes)
        sdnotify.status(f"worker {w.index} {_how(code)}; restarting in {delay:.1f} s")
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def restart() -> None:
            if handle is not None:
                self.restarts.discard(handle)
            if not self.stopping:
                task = asyncio.create_task(self._spawn(w))
                self.spawning.add(task)
                task.add_done_callback(self.spawning.discard)

        handle = loop.call_later(delay, restart)
        self.restarts.add(handle)

    def _on_notify(self, sock: socket.socket) -> None:
        while True:
            try:
                data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return
            pid = next((struct.unpack("3i", d[:12])[0] for level, kind, d in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), 0)
            w = next((w for w in self.workers if w.pid == pid), None)
            if w is None:
                continue
            for line in data.decode(errors="replace").splitlines():
                if line == "READY=1":
                    self._ready(w)
                elif line.startswith("STATUS=") and self.serving:  # e.g. a refused reload
                    sdnotify.status(f"worker {w.index}: {line.removeprefix('STATUS=')}")

    def _ready(self, w: Worker, report: bool = False) -> None:
        """READY=1 from ``w``, or (``report``) its start-up report on stdout: it serves
        once both have come, in either order."""
        if report or not w.ready:
            w.ready = w.ready or not report
            if not (w.ready and w.reported):
                return
            if self.serving:
                log.info("worker %d serving again (pid %d)", w.index, w.pid)
                sdnotify.status(f"serving with {len(self.workers)} workers")
            self.changed.set()
        elif w.pid in self.reloading:
            self.reloading.discard(w.pid)
            self._reload_done()


def backoff(crashes: int) -> float:
    """Seconds before restarting a worker that died ``crashes`` times in a row."""
    return min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (crashes - 1))


def _how(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


async def relay_lines(stream: asyncio.StreamReader, out: BinaryIO) -> None:
    """Copy ``stream`` to ``out`` in whole lines only, in large reads (decision lines come
    in batches); this process is the only writer of ``out``, so lines never interleave."""
    pending = b""
    while chunk := await stream.read(1 << 16):
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        pending = data[cut:]
        if cut:
            out.write(data[:cut])
            out.flush()
    if pending:
        out.write(pending + b"\n")
        out.flush()


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Run ``settings.workers`` workers of ``lockd <argv>`` until SIGTERM; the exit status."""
    try:
        return asyncio.run(Supervisor(settings, argv).run())
    except ListenFailed as exc:
        print(f"lockd: {exc}", file=sys.stderr)
        return 1
