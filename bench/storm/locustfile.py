"""A reboot storm of simulated zincati nodes, one locust user per node.

Runs inside locust (the bench venv, ``.venv-bench``), standalone or distributed. Start it
with ``python -m bench.storm.run`` (which also summarises), or by hand:

    locust -f bench/storm/locustfile.py --headless --users 1000 --spawn-rate 1000 \
        --host http://127.0.0.1:8080/ --storm-groups 10 --storm-slots 2 \
        --storm-time-scale 1/300 --storm-record-dir bench/out/run1

Each node is a small state machine that speaks exactly what zincati speaks
(PROTOCOL.md section 2): ``steady-state`` at boot until 200, then, with an update staged,
``pre-reboot`` every period (+0-10% jitter) until 200, then a "reboot" (connection dropped,
nothing sent) for the reboot time, then ``steady-state`` until 200. The user's ``wait_time``
is whatever the node's state says it waits for next.

The benchmark's independent record: every node notes, with wall-clock timestamps, when it
first asked for the lock, when it received a grant, when it sent the releasing
``steady-state`` and when that got 200, and how every ``steady-state`` that got no 200 ended
(no answer, or the kind of the answer). Each locust process writes its record to
``record-<pid>.jsonl`` in the record dir; ``bench.storm.report`` checks it.

A server that refuses the storm's groups (airlock refuses every group its config does not
list) would make every node poll in vain until ``--max-time``: when the first
``--storm-refused-after`` answers for a group are all a 4xx ``unknown_group`` or
``invalid_group``, the storm stops and the record names the refused groups.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import gevent
from geventhttpclient import HTTPClient
from locust import User, events, task
from locust.runners import MasterRunner, WorkerRunner

# The record format and its checker are plain Python beside this file; locust puts this
# file's directory on sys.path, and the storm runs from the repository root.
try:
    from bench.storm.safety import failed_event
except ImportError:  # run by hand from elsewhere: locust put bench/storm/ on sys.path
    from safety import failed_event  # type: ignore[no-redef]

# Node states.
BOOT, STAGED, REBOOTING, RETURNING, DONE, DEAD = (
    "boot", "staged", "rebooting", "returning", "done", "dead")
IDLE = 3600.0  # a node that has rebooted (or died) has nothing more to say
REQUEST_TIMEOUT = 30.0


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    # env_var lets the driver and hand-run workers share one set of parameters; locust also
    # forwards these options from the master to its workers when the run starts.
    add = parser.add_argument
    add("--storm-groups", type=int, default=1, env_var="STORM_GROUPS", help="number of groups")
    add("--storm-slots", type=int, default=1, env_var="STORM_SLOTS",
        help="slots per group configured on the server (for the verdict)")
    add("--storm-period", type=float, default=300.0, env_var="STORM_PERIOD",
        help="zincati's poll period in real seconds")
    add("--storm-reboot", type=float, default=60.0, env_var="STORM_REBOOT",
        help="how long a reboot takes, real seconds")
    add("--storm-time-scale", default="1", env_var="STORM_TIME_SCALE",
        help="multiply every real duration by this (e.g. 1/300)")
    add("--storm-die-fraction", type=float, default=0.0, env_var="STORM_DIE_FRACTION",
        help="fraction of nodes that die while holding a slot")
    add("--storm-group-prefix", default="storm-", env_var="STORM_GROUP_PREFIX",
        help="groups are PREFIX0 .. PREFIX<groups-1> (unless --storm-group-names)")
    add("--storm-group-names", default="", env_var="STORM_GROUP_NAMES",
        help="comma-separated group names; node i is in name i mod n (overrides the prefix)")
    add("--storm-refused-after", type=int, default=10, env_var="STORM_REFUSED_AFTER",
        help="stop when the first N answers for a group all refuse the group (0: never)")
    add("--storm-record-dir", default="bench/out/storm", env_var="STORM_RECORD_DIR")
    add("--storm-workers", type=int, default=1, env_var="STORM_WORKERS",
        help="number of locust workers (spreads node indexes evenly over groups)")
    add("--storm-seed", type=int, default=0, env_var="STORM_SEED")
    add("--storm-urls", default="", env_var="STORM_URLS",
        help="comma-separated base URLs of replicas; node i uses URL i mod n (else --host)")


def scale_of(text: str) -> float:
    return float(Fraction(text.strip()))


def group_names_of(opts: Any) -> list[str]:
    names = [n.strip() for n in opts.storm_group_names.split(",") if n.strip()]
    return names or [f"{opts.storm_group_prefix}{i}" for i in range(opts.storm_groups)]


MAX_ANSWERS = 40  # distinct non-200 answers counted by value; the rest are "other values"

# Kinds by which a server says "this group is not one of mine" (lockd, airlock).
REFUSAL_KINDS = frozenset({"unknown_group", "invalid_group"})


class Record:
    """This process's share of the benchmark's record, kept in memory, written at stop."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, str]] = []  # (t, node, group, event)
        self.statuses: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.states: Counter[str] = Counter()
        self.nodes: dict[str, str] = {}  # id -> group
        # Per group: refusals seen before any other answer (None once one came).
        self.refusal_count: dict[str, int | None] = {}
        self.refused: dict[str, dict[str, Any]] = {}  # group -> what the server said
        self.answers: Counter[str] = Counter()  # "op status kind: value" of non-200s

    def answer(self, op: str, status: int, kind: str, value: str) -> None:
        key = f"{op} {status} {kind}: {' '.join(value.split())[:120]}"
        if key not in self.answers and len(self.answers) >= MAX_ANSWERS:
            key = f"{op} {status} {kind}: (other values)"
        self.answers[key] += 1

    def note(self, node: ZincatiNode, event: str) -> None:
        self.events.append((time.time(), node.node_id, node.lock_group, event))

    def write(self, directory: str) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".record-{os.getpid()}.jsonl"
        with open(tmp, "w") as fh:
            fh.write(json.dumps({"nodes": self.nodes, "statuses": self.statuses,
                                 "kinds": self.kinds, "refused": self.refused,
                                 "answers": self.answers}) + "\n")
            for t, node, group, event in self.events:
                # json.dumps: a kind is the server's text and may hold any character.
                fh.write(json.dumps([round(t, 6), node, group, event]) + "\n")
        tmp.replace(path / f"record-{os.getpid()}.jsonl")


RECORD = Record()
_local_index = 0


def body_of(node_id: str, group: str) -> bytes:
    # zincati (serde_json::to_string_pretty): two-space indent, id before group.
    return (
        '{\n  "client_params": {\n'
        f'    "id": "{node_id}",\n    "group": "{group}"\n'
        "  }\n}"
    ).encode()


class ZincatiNode(User):
    """One node; its state decides what it sends next and how long it waits."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        global _local_index
        opts = environment.parsed_options
        runner = environment.runner
        local = _local_index
        _local_index += 1
        workers = max(1, opts.storm_workers)
        worker = max(0, getattr(runner, "worker_index", 0))
        # The master hands users out round-robin, so local*W+w numbers the nodes 0..N-1.
        index = local * workers + worker
        salt = f"{os.getpid()}/{id(environment)}/{worker}/{local}/{time.time_ns()}"
        self.node_id = hashlib.sha256(salt.encode()).hexdigest()[:32]
        names = group_names_of(opts)
        self.lock_group = names[index % len(names)]
        scale = scale_of(opts.storm_time_scale)
        self.period = opts.storm_period * scale
        self.reboot = opts.storm_reboot * scale
        # Seeded and drawn exactly as bench/storm/ideal.py's simulated nodes are.
        self.rng = random.Random(f"{opts.storm_seed}/{index}")
        self.dies = self.rng.random() < opts.storm_die_fraction
        self.state = BOOT
        self.next_wait = 0.0
        self.asked = False
        self.client: HTTPClient | None = None
        replicas = [u for u in opts.storm_urls.split(",") if u] or [self.host or ""]
        base = replicas[index % len(replicas)]
        parts = urlsplit(base)
        self.headers = {"fleet-lock-protocol": "true", "accept": "*/*"}
        if parts.username is not None:
            # zincati sends base-URL userinfo as Basic auth.
            creds = f"{parts.username}:{parts.password or ''}".encode()
            self.headers["authorization"] = "Basic " + base64.b64encode(creds).decode()
            base = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port
                                                            else "")).geturl()
        # reqwest's Url::join, like urljoin: without a trailing slash the last segment goes.
        self.urls = {op: urljoin(base, f"v1/{op}") for op in ("pre-reboot", "steady-state")}
        self.body = body_of(self.node_id, self.lock_group)
        RECORD.nodes[self.node_id] = self.lock_group
        RECORD.states[self.state] += 1

    def wait_time(self) -> float:
        return self.next_wait

    def tick(self) -> float:
        """zincati's refresh period with its 0-10% jitter."""
        return self.period * (1.0 + self.rng.uniform(0.0, 0.1))

    def move(self, state: str) -> None:
        RECORD.states[self.state] -= 1
        RECORD.states[state] += 1
        self.state = state

    def post(self, op: str) -> int:
        url = self.urls[op]
        if self.client is None:
            # No User-Agent, no Content-Type: exactly zincati's header set.
            self.client = HTTPClient.from_url(url, concurrency=1, network_timeout=REQUEST_TIMEOUT,
                                              connection_timeout=REQUEST_TIMEOUT)
            self.client.default_headers.clear()
        sent = time.time()
        start = time.perf_counter()
        status, length, exc, kind, value = 0, 0, None, "", ""
        try:
            resp = self.client.request("POST", urlsplit(url).path, body=self.body,
                                       headers=self.headers)
            try:
                data = resp.read()
            finally:
                resp.release()
            status, length = resp.status_code, len(data)
            if status != 200:
                kind, value = error_of(status, data)
                RECORD.kinds[kind] += 1
                RECORD.answer(op, status, kind, value)
        except Exception as error:  # any transport failure is "retry next tick" for zincati
            exc = error
            self.drop_connection()
        elapsed = (time.perf_counter() - start) * 1000.0
        RECORD.statuses[str(status) if status else "error"] += 1
        if op == "steady-state" and status != 200:
            # The checker decides whether the server may still apply it later (safety.py):
            # no answer is "unsure", an answer is "failed:<kind>".
            what = failed_event(kind, value) if status else "unsure"
            RECORD.events.append((sent, self.node_id, self.lock_group, what))
        if status:
            self.judge_group(status, kind, value)
        self.environment.events.request.fire(
            request_type="POST", name=op, response_time=elapsed, response_length=length,
            exception=exc, context={"status": status}, response=None, url=url)
        return status

    def judge_group(self, status: int, kind: str, value: str) -> None:
        """Stop the storm when the server keeps refusing this node's group (see the top)."""
        count = RECORD.refusal_count.get(self.lock_group, 0)
        if count is None:
            return  # the group got an answer that was not a refusal: it exists
        if not (400 <= status < 500 and kind in REFUSAL_KINDS):
            RECORD.refusal_count[self.lock_group] = None
            return
        RECORD.refusal_count[self.lock_group] = count + 1
        limit = self.environment.parsed_options.storm_refused_after
        if limit > 0 and count + 1 >= limit and self.lock_group not in RECORD.refused:
            RECORD.refused[self.lock_group] = {"status": status, "kind": kind, "value": value}
            refused(self.environment, self.lock_group)

    def drop_connection(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    @task
    def step(self) -> None:
        if self.state == BOOT:
            if self.post("steady-state") == 200:
                self.move(STAGED)
                # Nodes see the new release at different moments within one period.
                self.next_wait = self.rng.uniform(0.0, self.period)
            else:
                self.next_wait = self.tick()
        elif self.state == STAGED:
            if not self.asked:
                self.asked = True
                RECORD.note(self, "ask")
            if self.post("pre-reboot") == 200:
                RECORD.note(self, "grant")
                self.drop_connection()  # the machine goes down
                if self.dies:
                    RECORD.note(self, "die")
                    self.move(DEAD)
                    self.next_wait = IDLE
                    finished(self.environment, self)
                else:
                    self.move(REBOOTING)
                    self.next_wait = self.reboot
            else:
                self.next_wait = self.tick()
        elif self.state == REBOOTING:
            # Back up: the hold certainly lasted until this steady-state is sent.
            RECORD.note(self, "release")
            self.move(RETURNING)
            self.step()
        elif self.state == RETURNING:
            if self.post("steady-state") == 200:
                RECORD.note(self, "done")
                self.move(DONE)
                self.drop_connection()
                self.next_wait = IDLE
                finished(self.environment, self)
            else:
                self.next_wait = self.tick()
        else:
            self.next_wait = IDLE


def error_of(status: int, data: bytes) -> tuple[str, str]:
    """(kind, value) as zincati sees them: from the JSON body, else generic_http_<code>."""
    try:
        body = json.loads(data)
        kind, value = body.get("kind"), body.get("value")
        if isinstance(kind, str) and kind:
            return kind, value if isinstance(value, str) else ""
    except (ValueError, AttributeError):
        pass
    return f"generic_http_{status}", data[:200].decode(errors="replace")


# --- coordination: the master (or the standalone runner) ends the storm when it is over ---

FINISHED = "storm_finished"
PROGRESS = "storm_progress"
REFUSED = "storm_refused"
REFUSED_GRACE = 1.0  # seconds to let the other groups' first answers arrive before quitting
_progress: dict[str, dict[str, Any]] = {}
_finished = 0
_started = 0.0


def finished(environment: Any, node: ZincatiNode) -> None:
    environment.runner.send_message(FINISHED, {"state": node.state})


def _on_finished(environment: Any, msg: Any, **_: Any) -> None:
    global _finished
    _finished += 1
    if _finished >= environment.parsed_options.num_users:
        # Every node has rebooted or died: the storm is over.
        gevent.spawn_later(0.2, environment.runner.quit)


_quitting_for_refusal = False


def refused(environment: Any, group: str) -> None:
    environment.runner.send_message(REFUSED, {"group": group})


def _on_refused(environment: Any, msg: Any, **_: Any) -> None:
    global _quitting_for_refusal
    if not _quitting_for_refusal:
        _quitting_for_refusal = True
        sys.stderr.write(f"\nstorm: the server refuses group {msg.data['group']!r}; stopping\n")
        gevent.spawn_later(REFUSED_GRACE, environment.runner.quit)


def _on_progress(environment: Any, msg: Any, **_: Any) -> None:
    _progress[msg.data["who"]] = msg.data


def _report_progress(environment: Any) -> None:
    runner = environment.runner
    who = f"{os.getpid()}"
    while True:
        gevent.sleep(1.0)
        data = {"who": who, "states": dict(RECORD.states), "statuses": dict(RECORD.statuses)}
        try:
            runner.send_message(PROGRESS, data)
        except Exception:  # the master is going away; the record is still written at stop
            return


def _print_progress(environment: Any) -> None:
    tty = sys.stderr.isatty()
    every = 1.0 if tty else 5.0
    while True:
        gevent.sleep(every)
        states: Counter[str] = Counter()
        for p in _progress.values():
            states.update(p["states"])
        total = environment.stats.total
        nodes = environment.parsed_options.num_users
        line = (f"storm {time.time() - _started:6.1f}s  nodes {sum(states.values())}/{nodes}  "
                f"booting {states[BOOT]}  waiting {states[STAGED]}  "
                f"rebooting {states[REBOOTING] + states[RETURNING]}  done {states[DONE]}  "
                f"dead {states[DEAD]}  req/s {total.current_rps:7.1f}  "
                f"requests {total.num_requests}")
        sys.stderr.write(("\r" + line + "   ") if tty else line + "\n")
        sys.stderr.flush()


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if runner is None:
        return
    if not isinstance(runner, WorkerRunner):
        runner.register_message(FINISHED, lambda msg, **kw: _on_finished(environment, msg))
        runner.register_message(PROGRESS, lambda msg, **kw: _on_progress(environment, msg))
        runner.register_message(REFUSED, lambda msg, **kw: _on_refused(environment, msg))


@events.test_start.add_listener
def _test_start(environment: Any, **_: Any) -> None:
    global _started
    _started = time.time()
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        gevent.spawn(_report_progress, environment)
    if not isinstance(runner, WorkerRunner):
        gevent.spawn(_print_progress, environment)


def _write(environment: Any) -> None:
    opts = environment.parsed_options
    if not isinstance(environment.runner, MasterRunner):
        RECORD.write(opts.storm_record_dir)
    if not isinstance(environment.runner, WorkerRunner):
        _write_stats(environment)


def _write_stats(environment: Any) -> None:
    """Latency and rates as locust measured them (the master aggregates its workers)."""
    opts = environment.parsed_options
    stats = environment.stats
    out: dict[str, Any] = {"started": _started, "stopped": time.time(), "entries": {}}
    for name, entry in [("total", stats.total)] + [
        (key[0], entry) for key, entry in stats.entries.items()
    ]:
        out["entries"][name] = {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "p50_ms": entry.get_response_time_percentile(0.50),
            "p95_ms": entry.get_response_time_percentile(0.95),
            "p99_ms": entry.get_response_time_percentile(0.99),
            "max_ms": entry.max_response_time,
            "avg_ms": entry.avg_response_time,
            "first": entry.start_time,
            "last": entry.last_request_timestamp,
        }
    path = Path(opts.storm_record_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "locust-stats.json").write_text(json.dumps(out, indent=2))


@events.test_stop.add_listener
def _test_stop(environment: Any, **_: Any) -> None:
    _write(environment)


@events.quitting.add_listener
def _quitting(environment: Any, **_: Any) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    _write(environment)
