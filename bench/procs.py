"""Starting and stopping real processes: lockd itself and the stores it runs on.

The benchmarks and the tests share these (tests/ imports them; bench/ imports nothing from
tests/). Every process is started on a free loopback port in a directory of the caller's and
stopped by its PID (SIGTERM, then SIGKILL). No pytest here: the benchmark venv has none.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class MissingBinary(RuntimeError):
    """A program the caller needs is not installed; the message says which package has it."""


def find_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingBinary(
            f"{name} is not installed (apt-get install {package}; `make test` does it)"
        )
    return path


#: Ports free_port has handed out in this process: never handed out twice.
_GIVEN: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A loopback port nothing listens on, for a server about to be started on it.

    Picked below the kernel's ephemeral range, not with ``bind(0)``: a port from that range
    can be taken again, between this call and the server's own bind, as the source port of
    any outgoing connection (a CI run lost a Redis Cluster node to a port taken in that
    gap: "bind: Address already in use"). Hand-written: the stdlib has no such call.
    """
    low = 10000
    high = min(_ephemeral_range()[0], 65536) - 1
    for _ in range(200):
        port = random.randint(low, high)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as s:  # a crowded range: the kernel's pick, as before
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Proc:
    """A child process whose output goes to a log file; stopped by PID."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


LISTEN_RE = re.compile(r"lockd: (?P<name>[\w ]+) listening on (?P<url>https?://\S+)/")


def wait_until_serving(proc: Proc, timeout: float) -> dict[str, str]:
    """Wait for a started ``lockd serve`` to say it serves; its listeners' URLs by name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = proc.output()
        if "lockd: serving (pid" in out:
            return {m["name"]: m["url"] for m in LISTEN_RE.finditer(out)}
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"lockd exited with {proc.proc.returncode}:\n{out}")
        time.sleep(0.05)
    raise TimeoutError(f"lockd did not start:\n{proc.output()}")


class Lockd:
    """``lockd serve`` as a subprocess on free ports; ``url`` is its FleetLock base URL."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        env: dict[str, str] | None = None,
        name: str = "lockd",
        wrapper: Sequence[str] = (),
        module: str = "lockd",
        tree: Path | None = None,
    ) -> None:
        """``wrapper``: a command prefix lockd runs under (``prlimit --nofile=256 --``);
        ``module``: what ``python -m`` runs (a benchmark's variant of lockd's command);
        ``tree``: another checkout whose ``lockd`` package to run (this one by default)."""
        self.tmp = tmp
        self.args = list(args)
        self.extra_env = env or {}
        self.wrapper = list(wrapper)
        self.module = module
        self.name = name
        self.tree = tree or REPO
        self.urls: dict[str, str] = {}
        self.proc: Proc | None = None

    def start(self, timeout: float = 20.0) -> Lockd:
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        argv = [
            *self.wrapper,
            sys.executable,
            "-m",
            self.module,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            *self.args,
        ]
        log = self.tmp / f"{self.name}.log"
        log.unlink(missing_ok=True)
        self.proc = Proc(argv, log, env=env, cwd=self.tree).start()
        try:
            self.urls = wait_until_serving(self.proc, timeout)
        except BaseException:  # never left running when it did not start in time
            self.proc.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return self.urls["FleetLock"]

    @property
    def admin_url(self) -> str:
        return self.urls["admin"]

    def wait_for_output(self, text: str, timeout: float = 10.0) -> None:
        """Wait until lockd has printed or logged ``text``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while text not in self.proc.output():
            if time.monotonic() > deadline:
                raise TimeoutError(f"lockd never said {text!r}:\n{self.proc.output()}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        return self.proc.stop() if self.proc else None

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()


def start_lockd(tmp: Path, backend: str, *args: str, name: str = "lockd") -> Lockd:
    url = "memory://" if backend == "memory" else f"sqlite://{tmp / f'{name}.db'}"
    return Lockd(
        tmp, "--backend", url, "--group", "workers=2", "--log-format", "json", *args, name=name
    ).start()


