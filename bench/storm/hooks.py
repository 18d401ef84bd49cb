"""Commands run at fixed moments of a storm: ``--at SECONDS --run CMD`` (bench.storm.run).

A storm that is to show what a server does through a fault (a Redis master killed and its
replica promoted, a replica restarted) needs the fault at a known moment, not by hand.
Each hook runs ``CMD`` through ``sh -c`` once, ``SECONDS`` after the storm's load generator
was started; hooks run one after the other in one thread, in the order of their moments
(a slow hook delays the next). A hook's output goes to ``hook-N.log`` in the storm's
directory; its moment, exit status and duration go to ``result.json`` under ``hooks``. A
hook whose moment comes after the storm ended is recorded as not run. The runner is a
plain thread and ``subprocess``: no library schedules one-off shell commands against a
monotonic start time with a record of each, and this is twenty lines.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Hook:
    at: float
    cmd: str


def pair(ats: list[float], cmds: list[str]) -> list[Hook]:
    """``--at`` and ``--run`` given in pairs, the n-th ``--at`` for the n-th ``--run``."""
    if len(ats) != len(cmds):
        raise ValueError(f"--at given {len(ats)} times but --run {len(cmds)} times: "
                         "give them in pairs")
    if any(at < 0 for at in ats):
        raise ValueError("--at must be 0 or more seconds")
    if any(not cmd.strip() for cmd in cmds):
        raise ValueError("--run needs a command")
    return sorted((Hook(at, cmd) for at, cmd in zip(ats, cmds, strict=True)), key=lambda h: h.at)


class HookRunner:
    """Runs ``hooks`` relative to ``start()``; ``stop()`` ends the wait and returns the record."""

    def __init__(self, hooks: list[Hook], out: Path, env: dict[str, str] | None = None,
                 kill_after: float = 30.0) -> None:
        self.hooks = hooks
        self.out = out
        self.env = env
        self.kill_after = kill_after
        self.records: list[dict[str, Any]] = [
            {"at_s": h.at, "cmd": h.cmd, "ran": False, "started_s": None, "rc": None,
             "duration_s": None, "log": str(out / f"hook-{n}.log")}
            for n, h in enumerate(hooks)]
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storm-hooks", daemon=True)
        self._t0 = 0.0
        self._proc: subprocess.Popen | None = None

    def start(self) -> HookRunner:
        self._t0 = time.monotonic()
        if self.hooks:
            self._thread.start()
        return self

    def _run(self) -> None:
        for hook, record in zip(self.hooks, self.records, strict=True):
            if self._ended.wait(max(0.0, self._t0 + hook.at - time.monotonic())):
                return  # the storm ended first: this hook and the later ones never run
            started = time.monotonic()
            record["started_s"] = round(started - self._t0, 3)
            with open(record["log"], "wb") as log:
                self._proc = subprocess.Popen(["sh", "-c", hook.cmd], stdout=log,
                                              stderr=subprocess.STDOUT, env=self.env)
                record["ran"] = True
                record["rc"] = self._proc.wait()
            record["duration_s"] = round(time.monotonic() - started, 3)

    def stop(self) -> list[dict[str, Any]]:
        """End the wait; a hook still running gets ``kill_after`` seconds, then SIGKILL."""
        self._ended.set()
        if self._thread.is_alive():
            self._thread.join(self.kill_after)
        if self._thread.is_alive() and self._proc is not None:
            self._proc.kill()
            self._thread.join()
        return self.records


def failed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hooks that did not run, or ran and exited non-zero."""
    return [r for r in records if not r["ran"] or r["rc"] != 0]
