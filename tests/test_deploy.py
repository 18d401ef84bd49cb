"""deploy/: each artifact is checked by running what it describes, as far as this machine can.

Nothing here runs systemd as PID 1, a container engine or a Kubernetes cluster, so each test
replays what those would do, with the facts read from the shipped file itself (ExecStart,
USER, CMD, args, env...) rather than copied here: the unit's and the container's command
run as uid 65534 with their state directory and credentials, the Deployment's pod runs on a
real redis-server, the compose file's etcd members form a real cluster, the Flatcar
FleetLock client talks to a real lockd. The tools that can judge a file do
(systemd-analyze, promtool, the Kubernetes JSON schemas). The wheel is built and installed
into a fresh virtualenv once per run and every replay uses that install.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.procs import (
    REPO,
    Lockd,
    Proc,
    find_binary,
    free_port,
    start_lockd,
    wait_until_serving,
)  # fmt: skip
from bench.servers import RedisServer
from lockd import sdnotify
from lockd.cli import build_parser
from lockd.cli.serve import serve_overrides
from lockd.config import load
from lockd.groups import is_group_name
from tests.conftest import IN_CI
from tests.httpcall import call, lock

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "lockd.service"
CONTAINERFILE = DEPLOY / "Containerfile"
KUSTOMIZE = DEPLOY / "kubernetes"
NOBODY = 65534
#: Kubernetes schema version the manifests are validated against.
K8S_VERSION = "1.30.0"


# Helpers: parsing the shipped files


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> every value in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(directives: dict[str, list[str]], key: str) -> str:
    values = directives.get(key, [])
    assert len(values) == 1, f"{key}: expected one value, got {values}"
    return values[0]


def containerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage, continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        line = pending + stripped
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def butane_files(doc: dict[str, Any]) -> dict[str, str]:
    return {f["path"]: f["contents"]["inline"] for f in doc["storage"]["files"]}


def env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines, quoted as systemd's EnvironmentFile= and sh read them."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line
        words = shlex.split(value)
        assert len(words) == 1, f"{line}: one value, quoted if it has spaces"
        out[key] = words[0]
    return out


# Helpers: running lockd as the unprivileged user the deployments use


def require_root() -> None:
    if os.geteuid() != 0:
        message = "needs root, to run lockd as uid 65534 as systemd and containers do"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)  # only outside CI: under CI=true it failed just above


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temp dir that uid 65534 can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="lockd-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def owned_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, NOBODY, NOBODY)
    path.chmod(mode)
    return path


#: MemoryDenyWriteExecute= the way the kernel offers it to anyone (PR_SET_MDWE, Linux 6.3+):
#: inherited across execve and setuid, so everything exec'd after it runs under W^X.
MDWE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


def kernel_has_mdwe() -> bool:
    probe = [host_python(), "-c", MDWE, "/bin/true"]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def as_nobody(argv: list[str], nofile: int | None = None, mdwe: bool = False) -> list[str]:
    """What systemd does before exec for DynamicUser=, NoNewPrivileges=, LimitNOFILE= and
    MemoryDenyWriteExecute=."""
    prefix: list[str] = []
    if mdwe:
        prefix = [host_python(), "-c", MDWE]
    if nofile is not None:
        prefix += [find_binary("prlimit", "util-linux"), f"--nofile={nofile}:{nofile}", "--"]
    setpriv = find_binary("setpriv", "util-linux")
    return [
        *prefix, setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--", *argv,
    ]  # fmt: skip


class Served:
    """A lockd process started from a replayed command line; stopped by PID."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> None:
        self.proc = Proc(argv, log, env=env, cwd=cwd)
        self.urls: dict[str, str] = {}

    def start(self, timeout: float = 30.0) -> Served:
        self.proc.start()
        self.urls = wait_until_serving(self.proc, timeout)
        return self

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.proc.output():
            if time.monotonic() > deadline:
                raise TimeoutError(f"lockd never said {text!r}:\n{self.proc.output()}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.wait(timeout)

    def stop(self) -> None:
        self.proc.stop()


def loopback(*names: str) -> list[str]:
    """Flags that move listeners to free loopback ports: tests listen on 127.0.0.1 only."""
    flags = {"FleetLock": "--listen", "admin": "--admin-listen"}
    return [arg for name in names for arg in (flags[name], f"127.0.0.1:{free_port()}")]


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def answers(url: str) -> bool:
    """200 from ``url``; False while nothing listens yet."""
    try:
        return get(url, timeout=2) == 200
    except OSError:
        return False


# The wheel, built and installed once: packaging, and the install every replay runs


class Installed:
    def __init__(self, venv: Path, dist: Path) -> None:
        self.venv = venv
        self.dist = dist

    @property
    def lockd(self) -> str:
        return str(self.venv / "bin" / "lockd")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def host_python() -> str:
    """The host's own python3, as /opt/lockd would be built from (docs/self-hosted.md).

    Not this test run's interpreter: that one may live where uid 65534 cannot reach it
    (pyenv under /root), and the replays run the venv as uid 65534."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            done = subprocess.run(
                [candidate, "-c", "import sys, venv; print(sys.version_info >= (3, 11))"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if done.stdout.strip() == "True":
                return candidate
    return sys.executable


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """``python -m build`` (an sdist, then the wheel built from that sdist), and the wheel
    installed with the ``speed`` extra into a fresh virtualenv, as deploy/Containerfile does."""
    root = Path(tempfile.mkdtemp(prefix="lockd-wheel-"))
    root.chmod(0o755)
    try:
        dist, venv = root / "dist", root / "venv"
        src = root / "src"  # a copy: building in the checkout would leave build/ behind
        shutil.copytree(
            REPO, src,
            ignore=shutil.ignore_patterns(".venv*", ".git", "build", "*.egg-info", "__pycache__",
                                          ".pytest_cache", ".ruff_cache", ".hypothesis", "bench"),
        )  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
            check=True, capture_output=True, timeout=240,
        )  # fmt: skip
        subprocess.run(
            [host_python(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
        )
        (wheel,) = dist.glob("lockd-*.whl")
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "-q", "--disable-pip-version-check", f"{wheel}[all]"],
            check=True, capture_output=True, timeout=240,
        )  # fmt: skip
        for path in root.rglob("*"):  # readable by uid 65534, as /opt/lockd is
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
        yield Installed(venv, dist)
    finally:
        shutil.rmtree(root, ignore_errors=True)


#: Where each data file is in the source tree (and so the sdist) -> in the wheel, where
#: backends/ is installed as lockd/backends/.
PACKAGE_DATA = {
    "lockd/static/status.html": "lockd/static/status.html",
    "lockd/openapi.json": "lockd/openapi.json",
    "lockd/openapi-fleetlock.json": "lockd/openapi-fleetlock.json",
    "backends/resources/cas.lua": "lockd/backends/resources/cas.lua",
}


@pytest.mark.packaging
def test_sdist_and_wheel_carry_the_static_files_and_lua(installed: Installed) -> None:
    (wheel,) = installed.dist.glob("lockd-*.whl")
    (sdist,) = installed.dist.glob("lockd-*.tar.gz")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    in_wheel = set(PACKAGE_DATA.values())
    assert in_wheel <= names, in_wheel - names
    assert "lockd/sdnotify.py" in names and "lockd/backends/sqlite.py" in names
    assert not any(n.startswith("backends/") for n in names), "one top-level name: lockd"
    with tarfile.open(sdist) as tf:
        inside = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert set(PACKAGE_DATA) <= inside, set(PACKAGE_DATA) - inside
    # The installed copy finds them the way lockd does, relative to its package.
    code = (
        "from importlib.resources import files; "
        "print(len(files('lockd.backends').joinpath('resources/cas.lua').read_text()), "
        "len(files('lockd').joinpath('static/status.html').read_text()))"
    )
    out = subprocess.run(
        [installed.python, "-c", code], check=True, capture_output=True, text=True,
        cwd="/", timeout=30,
    ).stdout.split()  # fmt: skip
    assert all(int(n) > 0 for n in out)


@pytest.mark.packaging
def test_wheel_installs_and_serves_in_a_clean_venv(installed: Installed, tmp_path: Path) -> None:
    port = free_port()
    argv = [installed.lockd, "serve", "--backend", "memory://",
            "--listen", f"127.0.0.1:{port}", "--no-admin"]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path)}
    server = Served(argv, tmp_path / "lockd.log", env, cwd=tmp_path).start()
    try:
        assert get(f"http://127.0.0.1:{port}/healthz") == 200
        assert lock(f"http://127.0.0.1:{port}", "pre-reboot", "node-a", "default")[0] == 200
        # Imported from the venv, not from this checkout.
        assert str(installed.venv) in subprocess.run(
            [installed.python, "-c", "import lockd; print(lockd.__file__)"],
            check=True, capture_output=True, text=True, cwd="/", timeout=30,
        ).stdout  # fmt: skip
    finally:
        server.stop()


# lockd/sdnotify.py


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket where systemd's would be, named in $NOTIFY_SOCKET."""
    path = Path(tempfile.mkdtemp(prefix="sdn-")) / "notify"  # AF_UNIX paths are short
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(path.parent, ignore_errors=True)


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_sdnotify_sends_each_state_as_one_datagram(notify_socket: socket.socket) -> None:
    assert sdnotify.ready()
    assert received(notify_socket) == "READY=1"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    lines = received(notify_socket).split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert lines[0] == "RELOADING=1"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after
    assert sdnotify.stopping()
    assert received(notify_socket) == "STOPPING=1"
    assert sdnotify.status("serving\nbackend sqlite")
    assert received(notify_socket) == "STATUS=serving backend sqlite"


def test_sdnotify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"lockd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert received(sock) == "READY=1"


def test_sdnotify_without_systemd_does_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.ready() is False  # reported, never raised
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.stopping() is False


# systemd: deploy/lockd.service


def unit() -> dict[str, dict[str, list[str]]]:
    return unit_directives(UNIT.read_text())


def test_unit_declares_what_the_issue_asks() -> None:
    service = unit()["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "DynamicUser") == "yes"
    assert one(service, "StateDirectory") == "lockd"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "LoadCredential") == "admin-token:/etc/lockd/admin-token"
    argv = shlex.split(one(service, "ExecStart"))
    assert argv[argv.index("--admin-token-file") + 1] == "%d/admin-token"
    assert argv[argv.index("--state-dir") + 1] == "${STATE_DIRECTORY}"
    reload = shlex.split(one(service, "ExecReload"))
    assert reload[0] == "/bin/sh" and shlex.split(reload[2]) == ["kill", "-HUP", "$MAINPID"]
    # Above the listen backlog (4096) that a boot storm fills at once.
    assert int(one(service, "LimitNOFILE")) >= 16384


def unit_copy(tmp: Path, lockd_path: str) -> Path:
    """The unit with ExecStart's binary pointed at an installed lockd (verify checks it)."""
    text = UNIT.read_text().replace("/opt/lockd/bin/lockd", lockd_path)
    path = tmp / "lockd.service"
    path.write_text(text)
    return path


def test_unit_passes_systemd_analyze_verify_and_security(
    installed: Installed, tmp_path: Path
) -> None:
    analyze = find_binary("systemd-analyze", "systemd")
    path = unit_copy(tmp_path, installed.lockd)
    verify = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "lockd.service" not in verify.stderr, verify.stderr  # no warning about our unit
    # --threshold is in tenths of the printed level: 20 = 2.0 ("OK"; 10 would be "SAFE").
    security = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert security.returncode == 0, security.stdout + security.stderr
    match = re.search(r"Overall exposure level for lockd\.service: ([\d.]+)", security.stdout)
    assert match and float(match[1]) <= 2.0, security.stdout[-400:]


class UnitReplay:
    """What systemd does to start deploy/lockd.service, step by step, without systemd."""

    def __init__(self, installed: Installed, root: Path) -> None:
        service = unit()["Service"]
        self.service = service
        self.state = owned_dir(root / "var/lib/lockd")  # StateDirectory=, StateDirectoryMode=
        # LoadCredential=: the source is root's own (0600); systemd copies it into a
        # directory of the service user's, read-only.
        name, _, source = one(service, "LoadCredential").partition(":")
        self.token = "deploy-test-token-" + os.urandom(8).hex()
        host_copy = root / source.lstrip("/")
        host_copy.parent.mkdir(parents=True)
        host_copy.write_text(self.token + "\n")
        host_copy.chmod(0o600)
        self.host_token = host_copy
        self.creds = root / "run/credentials/lockd.service"
        self.creds.mkdir(parents=True)
        shutil.copy(host_copy, self.creds / name)
        os.chown(self.creds / name, NOBODY, NOBODY)
        (self.creds / name).chmod(0o400)
        os.chown(self.creds, NOBODY, NOBODY)
        self.creds.chmod(0o500)
        # /etc/lockd/lockd.toml, installed from deploy/lockd.toml as the docs say.
        self.config = root / "etc/lockd/lockd.toml"
        shutil.copy(DEPLOY / "lockd.toml", self.config)
        self.config.chmod(0o644)
        argv = shlex.split(one(service, "ExecStart"))
        assert argv[0] == "/opt/lockd/bin/lockd"
        replaced = {
            "%d": str(self.creds),
            "${STATE_DIRECTORY}": str(self.state),
            "/etc/lockd/lockd.toml": str(self.config),
        }
        self.argv = [installed.lockd] + [
            next((a.replace(k, v) for k, v in replaced.items() if k in a), a) for a in argv[1:]
        ]
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "CREDENTIALS_DIRECTORY": str(self.creds),
            "STATE_DIRECTORY": str(self.state),
        }
        # LimitNOFILE=, capped at this machine's hard limit where the sandbox cannot raise it
        # (no CAP_SYS_RESOURCE here); systemd itself can.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.nofile = min(int(one(service, "LimitNOFILE")), hard)
        self.root = root
        self.starts = 0

    def start(self, extra_env: dict[str, str] | None = None) -> Served:
        # W^X as MemoryDenyWriteExecute=yes asks, where this kernel can impose it.
        mdwe = one(self.service, "MemoryDenyWriteExecute") == "yes" and kernel_has_mdwe()
        argv = as_nobody(
            self.argv + loopback("FleetLock", "admin"), nofile=self.nofile, mdwe=mdwe
        )
        env = {**self.env, **(extra_env or {})}
        old = os.umask(int(one(self.service, "UMask"), 8))
        try:
            self.starts += 1
            log = self.root / f"lockd-{self.starts}.log"  # one per start: "serving" is new
            return Served(argv, log, env, cwd=Path("/")).start()
        finally:
            os.umask(old)

    def reload(self, server: Served) -> None:
        """ExecReload=, as written; systemd passes $MAINPID in its environment."""
        argv = shlex.split(one(self.service, "ExecReload"))
        env = {"PATH": "/usr/bin:/bin", "MAINPID": str(server.proc.pid)}
        subprocess.run(argv, check=True, env=env, timeout=10)


def test_unit_replayed_starts_serves_reloads_and_stops(
    installed: Installed, world_tmp: Path
) -> None:
    require_root()
    replay = UnitReplay(installed, world_tmp)
    server = replay.start()
    try:
        pid = server.proc.pid
        assert uid_of(pid) == NOBODY
        assert Path(f"/proc/{pid}/exe").resolve().name.startswith("python")  # exec'd through
        limit = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(rf"Max open files\s+{replay.nofile}\s+{replay.nofile}", limit), limit
        url, admin = server.urls["FleetLock"], server.urls["admin"]
        assert get(url + "/healthz") == 200
        assert get(url + "/readyz") == 200
        assert lock(url, "pre-reboot", "node-a", "workers")[0] == 200
        # The store is the sqlite file in StateDirectory, private to the service user.
        db = replay.state / "lockd.db"
        assert db.stat().st_uid == NOBODY and db.stat().st_mode & 0o077 == 0
        # The admin listener takes the token from the credential, and only it.
        assert call(admin, "GET", "/api/v1/groups")[0] == 401
        status, body = call(admin, "GET", "/api/v1/groups/workers", token=replay.token)
        assert status == 200 and body["slots"] == 2
        # The operator's command from docs/self-hosted.md, with root's own token file.
        ctl = subprocess.run(
            [installed.lockd, "status", "workers", "--server", admin,
             "--token-file", str(replay.host_token)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert ctl.returncode == 0 and "node-a" in ctl.stdout, ctl.stdout + ctl.stderr
        # systemctl reload: ExecReload sends SIGHUP; lockd re-reads /etc/lockd/lockd.toml.
        replay.config.write_text(replay.config.read_text().replace("slots = 2", "slots = 3"))
        replay.reload(server)
        server.wait_for("configuration reloaded")
        deadline = time.monotonic() + 10
        while call(admin, "GET", "/api/v1/groups/workers", token=replay.token)[1]["slots"] != 3:
            assert time.monotonic() < deadline, server.proc.output()
            time.sleep(0.1)
        # systemctl stop: SIGTERM, a clean exit within TimeoutStopSec.
        server.proc.signal(signal.SIGTERM)
        assert server.wait_exit(float(one(replay.service, "TimeoutStopSec"))) == 0
    finally:
        server.stop()


def test_unit_restart_keeps_holders_and_a_restored_backup_brings_back_its_own(
    installed: Installed, world_tmp: Path
) -> None:
    """docs/production.md, "Backups and restore": an online backup with SQLite's backup API,
    a restart that forgets nobody, and a restore that brings back the backup's holders."""
    require_root()
    replay = UnitReplay(installed, world_tmp)
    db = replay.state / "lockd.db"
    backup = world_tmp / "lockd-backup.db"
    server = replay.start()
    try:
        url = server.urls["FleetLock"]
        assert lock(url, "pre-reboot", "node-a", "workers")[0] == 200
        source, target = sqlite3.connect(db), sqlite3.connect(backup)
        with source, target:
            source.backup(target)  # while lockd runs, as the docs do it
        source.close()
        target.close()
        assert lock(url, "pre-reboot", "node-b", "workers")[0] == 200
        assert lock(url, "steady-state", "node-a", "workers")[0] == 200
    finally:
        server.stop()
    server = replay.start()  # a restart: the store keeps its holders
    try:
        groups = call(server.urls["admin"], "GET", "/api/v1/groups/workers", token=replay.token)
        assert [h["id"] for h in groups[1]["holders"]] == ["node-b"]
    finally:
        server.stop()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, db)
    db.chmod(0o600)
    shutil.chown(db, replay.state.stat().st_uid, replay.state.stat().st_gid)  # --reference=.
    server = replay.start()
    try:
        groups = call(server.urls["admin"], "GET", "/api/v1/groups/workers", token=replay.token)
        # node-a released after the backup and holds again; node-b's grant is forgotten.
        assert [h["id"] for h in groups[1]["holders"]] == ["node-a"]
    finally:
        server.stop()


def test_unit_without_the_credential_copy_cannot_read_roots_token(
    installed: Installed, world_tmp: Path
) -> None:
    """Why LoadCredential=: the service user cannot read /etc/lockd/admin-token itself,
    and lockd refuses to start rather than serve the admin API without its token."""
    require_root()
    replay = UnitReplay(installed, world_tmp)
    source = world_tmp / one(replay.service, "LoadCredential").split(":", 1)[1].lstrip("/")
    argv = [a if not a.endswith("/admin-token") else str(source) for a in replay.argv]
    done = subprocess.run(
        as_nobody(argv + loopback("FleetLock", "admin")), env=replay.env,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "token" in done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unit_replayed_tells_systemd_ready_reloading_stopping(
    installed: Installed, world_tmp: Path, workers: str
) -> None:
    """Type=notify: READY=1 only once /healthz answers; RELOADING=1 then READY=1 around a
    SIGHUP; STOPPING=1 on SIGTERM. With workers (service.workers), the supervisor speaks
    for them, in the unit's sandbox."""
    require_root()
    replay = UnitReplay(installed, world_tmp)
    sock_path = world_tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        os.chown(sock_path, NOBODY, NOBODY)
        sock.settimeout(15)
        server = replay.start({"NOTIFY_SOCKET": str(sock_path),
                               "LOCKD_SERVICE__WORKERS": workers})
        try:
            messages: list[str] = []
            while "READY=1" not in messages:
                messages.extend(received(sock).split("\n"))
            assert get(server.urls["FleetLock"] + "/healthz") == 200
            if workers != "1":
                assert f"MAINPID={server.proc.pid}" in messages
                assert f"with {workers} workers" in server.proc.output()
            replay.reload(server)
            after_reload: list[str] = []
            while "READY=1" not in after_reload:
                after_reload.extend(received(sock).split("\n"))
            assert after_reload.index("RELOADING=1") < after_reload.index("READY=1")
            server.proc.signal(signal.SIGTERM)
            stopping: list[str] = []
            while "STOPPING=1" not in stopping:
                stopping.extend(received(sock).split("\n"))
            assert server.wait_exit(20) == 0
        finally:
            server.stop()


# Container: deploy/Containerfile


def final_stage() -> dict[str, list[str]]:
    stages = containerfile_stages(CONTAINERFILE.read_text())
    assert len(stages) >= 2, "multi-stage: a build stage and a small final stage"
    facts: dict[str, list[str]] = {}
    for instruction, args in stages[-1]:
        facts.setdefault(instruction, []).append(args)
    return facts


def test_containerfile_final_stage_is_small_and_unprivileged() -> None:
    facts = final_stage()
    (base,) = facts["FROM"]
    assert base.endswith("-slim"), base  # no compilers in python:*-slim
    assert facts["USER"] == [f"{NOBODY}:{NOBODY}"]
    # Nothing is built or installed in the final stage: it copies the built venv.
    assert all(c.startswith("--from=") for c in facts["COPY"]), facts["COPY"]
    run = " ".join(facts.get("RUN", []))
    assert not re.search(r"\b(pip|apt-get|apk|dnf|gcc|make)\b", run), run
    # The state directory exists and belongs to the image's user.
    assert "mkdir -p /var/lib/lockd" in run and f"chown {NOBODY}:{NOBODY} /var/lib/lockd" in run
    assert facts["VOLUME"] == ["/var/lib/lockd"]
    health = facts["HEALTHCHECK"][0]
    assert "CMD [" in health and "/healthz" in health and "curl" not in health


def test_container_command_replayed_serves_as_nobody_with_its_state_dir(
    installed: Installed, world_tmp: Path
) -> None:
    """ENTRYPOINT + CMD of the final stage, as uid 65534 in WORKDIR, with /var/lib/lockd
    standing for the volume; then the HEALTHCHECK command, as the engine runs it."""
    require_root()
    facts = final_stage()
    command = exec_form(facts["ENTRYPOINT"][0]) + exec_form(facts["CMD"][0])
    state_path = facts["VOLUME"][0]
    state = owned_dir(world_tmp / state_path.lstrip("/"))
    assert command[0] == "lockd"  # found on PATH=/opt/lockd/bin:... (ENV in the image)
    argv = [installed.lockd] + [a.replace(state_path, str(state)) for a in command[1:]]
    argv += loopback("FleetLock", "admin")  # what `podman run IMAGE ARGS...` appends
    env = {"PATH": f"{installed.venv}/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for assignment in facts.get("ENV", []):
        for word in shlex.split(assignment):
            key, _, value = word.partition("=")
            if key != "PATH":
                env[key] = value
    workdir = facts["WORKDIR"][-1].replace(state_path, str(state))
    server = Served(as_nobody(argv), world_tmp / "lockd.log", env, cwd=Path(workdir)).start()
    try:
        assert uid_of(server.proc.pid) == NOBODY
        url = server.urls["FleetLock"]
        assert lock(url, "pre-reboot", "node-a", "workers")[0] == 200
        assert (state / "lockd.db").stat().st_uid == NOBODY
        # The status page comes from the wheel's static files.
        status, page = call(server.urls["admin"], "GET", "/")
        assert status == 200 and "<html" in page.lower()
        health = exec_form(facts["HEALTHCHECK"][0].split("CMD", 1)[1].strip())
        port = url.rsplit(":", 1)[1]
        health = [installed.python if h == "python" else h.replace(":8080/", f":{port}/")
                  for h in health]  # fmt: skip
        assert subprocess.run(as_nobody(health), env=env, timeout=30).returncode == 0
        server.stop()
        assert (
            subprocess.run(as_nobody(health), env=env, capture_output=True, timeout=30).returncode
            != 0
        )  # a stopped lockd is unhealthy
    finally:
        server.stop()


# Compose files


def compose(name: str) -> dict[str, Any]:
    (doc,) = yaml_docs(DEPLOY / name)
    return doc


def lockd_command_loads(command: list[str], tmp_path: Path) -> Any:
    """The service's command (it replaces CMD) parsed by lockd's own CLI and loader."""
    token = tmp_path / "admin-token"
    token.write_text("t\n")
    args = build_parser().parse_args(
        ["serve", *(str(token) if a == "/run/secrets/admin-token" else a for a in command)]
    )
    return load(args.config, overrides=serve_overrides(args), environ={})


def test_compose_redis_runs_lockd_on_a_durable_redis(tmp_path: Path) -> None:
    doc = compose("compose.redis.yaml")
    redis, lockd = doc["services"]["redis"], doc["services"]["lockd"]
    assert redis["command"][:1] == ["redis-server"]
    assert "--appendonly yes" in " ".join(redis["command"])
    assert "--appendfsync always" in " ".join(redis["command"])
    assert lockd["build"]["dockerfile"] == "deploy/Containerfile"
    assert lockd["depends_on"]["redis"]["condition"] == "service_healthy"
    settings = lockd_command_loads(lockd["command"], tmp_path)
    assert settings.backend_url == "redis://redis:6379/0"
    assert str(settings.listen) == "0.0.0.0:8080"
    assert settings.admin_token_file  # the admin listener is published, so it has a token
    assert lockd["secrets"] == ["admin-token"] and "admin-token" in doc["secrets"]
    assert "127.0.0.1:8081:8081" in lockd["ports"]  # admin: host loopback only


def test_compose_etcd_is_a_three_member_cluster_with_v2(tmp_path: Path) -> None:
    doc = compose("compose.etcd.yaml")
    members = {n: s for n, s in doc["services"].items() if n.startswith("etcd")}
    assert len(members) == 3
    clusters = set()
    for name, member in members.items():
        assert member["image"].startswith("quay.io/coreos/etcd:v3.5.")  # 3.6 drops v2
        cmd = member["command"]
        assert cmd[0] == "/usr/local/bin/etcd"
        assert cmd[cmd.index("--name") + 1] == name
        assert "--enable-v2=true" in cmd
        assert cmd[cmd.index("--initial-advertise-peer-urls") + 1] == f"http://{name}:2380"
        assert cmd[cmd.index("--advertise-client-urls") + 1] == f"http://{name}:2379"
        clusters.add(member["environment"]["ETCD_INITIAL_CLUSTER"])
    (cluster,) = clusters
    assert cluster == ",".join(f"{n}=http://{n}:2380" for n in sorted(members))
    lockd = doc["services"]["lockd"]
    settings = lockd_command_loads(lockd["command"], tmp_path)
    assert settings.backend_url == "etcd://" + ",".join(f"{n}:2379" for n in sorted(members))
    assert set(lockd["depends_on"]) == set(members)


def test_compose_etcd_members_replayed_form_a_cluster_lockd_uses(
    installed: Installed, tmp_path: Path
) -> None:
    """The three etcd services, each with its own environment and command (Debian's etcd
    standing for the image's), every compose host name mapped to a loopback port; then
    lockd's command on that cluster, on the v3 API and on the v2 API that --enable-v2 opens."""
    etcd = find_binary("etcd", "etcd-server")
    doc = compose("compose.etcd.yaml")
    members = {n: s for n, s in doc["services"].items() if n.startswith("etcd")}
    ports = {(n, p): free_port() for n in members for p in (2379, 2380)}

    def local(text: str, member: str) -> str:
        for (name, port), real in ports.items():
            text = text.replace(f"{name}:{port}", f"127.0.0.1:{real}")
        for port in (2379, 2380) if member else ():  # 0.0.0.0: this member's own port
            text = text.replace(f"0.0.0.0:{port}", f"127.0.0.1:{ports[member, port]}")
        return text

    procs = []
    try:
        for name, member in members.items():
            env = {k: local(str(v), name) for k, v in member["environment"].items()}
            env["ETCD_DATA_DIR"] = str(tmp_path / name)
            argv = [etcd, *(local(a, name) for a in member["command"][1:])]
            procs.append(Proc(argv, tmp_path / f"{name}.log", env={**env, "PATH": "/usr/bin:/bin"}))
            procs[-1].start()
        for name in members:
            deadline = time.monotonic() + 30
            while not answers(f"http://127.0.0.1:{ports[name, 2379]}/health"):
                assert time.monotonic() < deadline, procs[0].output()[-2000:]
                time.sleep(0.2)
        command = doc["services"]["lockd"]["command"]
        backend = local(command[command.index("--backend") + 1], "")
        for url in (backend, backend.replace("etcd://", "etcd2://")):
            argv = [installed.lockd, "serve", "--backend", url, "--group", "workers=2",
                    *loopback("FleetLock", "admin")]  # fmt: skip
            env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
            server = Served(argv, tmp_path / "lockd.log", env, cwd=tmp_path)
            server.proc.log_path.unlink(missing_ok=True)
            server.start()
            try:
                assert get(server.urls["FleetLock"] + "/readyz") == 200, url
                assert lock(server.urls["FleetLock"], "pre-reboot", "node-a", "workers")[0] == 200
            finally:
                server.stop()
    finally:
        for proc in procs:
            proc.stop()


# Kubernetes: deploy/kubernetes/


def kustomization() -> dict[str, Any]:
    (doc,) = yaml_docs(KUSTOMIZE / "kustomization.yaml")
    return doc


def manifests() -> list[dict[str, Any]]:
    return [d for r in kustomization()["resources"] for d in yaml_docs(KUSTOMIZE / r)]


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_files_that_exist() -> None:
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    for entry in k["resources"]:
        assert (KUSTOMIZE / entry).is_file(), entry
    for generator in k["configMapGenerator"]:
        for f in generator["files"]:
            assert (KUSTOMIZE / f.split("=")[-1]).is_file(), f
    assert {i["name"] for i in k["images"]} == {
        c["image"] for c in by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    }
    (replicas,) = k["replicas"]
    assert replicas["name"] == "lockd" and replicas["count"] >= 2


def test_kubernetes_manifests_match_the_schemas() -> None:
    import kubernetes_validate

    for doc in manifests():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked structurally below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_servicemonitor_selects_the_metrics_service_only() -> None:
    sm = by_kind("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    services = [d for d in manifests() if d["kind"] == "Service"]
    wanted = sm["spec"]["selector"]["matchLabels"]
    selected = [s for s in services if matches(wanted, s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in selected] == ["lockd-metrics"]
    ports = {p["name"] for p in selected[0]["spec"]["ports"]}
    for endpoint in sm["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def pod_config() -> Any:
    """kubernetes/lockd.toml as lockd loads it in the pod (env from the Secret wins)."""
    return load(str(KUSTOMIZE / "lockd.toml"), environ={})


def test_deployment_pods_are_locked_down_probed_and_spread() -> None:
    deployment = by_kind("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert matches(spec["selector"]["matchLabels"], labels)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == NOBODY
    assert pod["automountServiceAccountToken"] is False
    (spread,) = pod["topologySpreadConstraints"]  # replicas on different nodes
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert matches(spread["labelSelector"]["matchLabels"], labels)
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    settings = pod_config()
    assert ports["fleetlock"] == settings.listen.port
    assert ports["metrics"] == settings.metrics_listen.port
    assert settings.admin_listen.host == "127.0.0.1"  # pod loopback: not on any Service
    assert settings.admin_listen.port not in ports.values()
    pdb = by_kind("PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["minAvailable"] >= 1
    # The Secret and ConfigMap the pod uses are the ones kustomization.yaml generates.
    (env,) = container["env"]
    ref = env["valueFrom"]["secretKeyRef"]
    secrets = {g["name"]: g for g in kustomization()["secretGenerator"]}
    assert any(lit.startswith(ref["key"] + "=") for lit in secrets[ref["name"]]["literals"])
    config_maps = {g["name"] for g in kustomization()["configMapGenerator"]}
    assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} <= config_maps


def test_node_facing_service_does_not_expose_the_admin_listener() -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    admin_port = pod_config().admin_listen.port
    for service in (d for d in manifests() if d["kind"] == "Service"):
        if not matches(
            service["spec"]["selector"],
            by_kind("Deployment")["spec"]["template"]["metadata"]["labels"],
        ):
            continue
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert (named[target] if isinstance(target, str) else target) != admin_port
    node_facing = by_kind("Service", "lockd")
    assert [p["targetPort"] for p in node_facing["spec"]["ports"]] == ["fleetlock"]


def test_deployment_pod_replayed_on_redis(
    installed: Installed, world_tmp: Path, redis_server: RedisServer, unique: str
) -> None:
    """The pod's command: the image's ENTRYPOINT with the Deployment's args, its env (the
    backend URL from the generated Secret, pointed at a real redis-server), the ConfigMap at
    /etc/lockd, as uid 65534 with nothing writable; then its probes."""
    require_root()
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    entrypoint = exec_form(final_stage()["ENTRYPOINT"][0])
    etc = world_tmp / "etc/lockd"
    etc.mkdir(parents=True)
    for mount in container["volumeMounts"]:
        if mount["mountPath"] == "/etc/lockd":
            shutil.copy(KUSTOMIZE / "lockd.toml", etc / "lockd.toml")
    args = [a.replace("/etc/lockd", str(etc)) for a in container["args"]]
    secrets = {g["name"]: g for g in kustomization()["secretGenerator"]}
    (env_var,) = container["env"]
    ref = env_var["valueFrom"]["secretKeyRef"]
    literal = next(
        lit.split("=", 1)[1] for lit in secrets[ref["name"]]["literals"]
        if lit.startswith(ref["key"] + "=")
    )  # fmt: skip
    backend = re.sub(r"^redis://[^/]+/", f"redis://127.0.0.1:{redis_server.port}/", literal)
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/nonexistent",  # uid 65534's home in the image
        env_var["name"]: f"{backend}?prefix=test-{unique}:",
    }
    metrics_port = free_port()
    argv = [
        installed.lockd,
        *entrypoint[1:],
        *args,
        *loopback("FleetLock", "admin"),
        "--set",
        "status.address=127.0.0.1",
        "--set",
        f"status.port={metrics_port}",
    ]
    # readOnlyRootFilesystem: the working directory is not writable for uid 65534.
    server = Served(as_nobody(argv), world_tmp / "lockd.log", env, cwd=world_tmp).start()
    try:
        ports = {"fleetlock": server.urls["FleetLock"], "metrics": server.urls["metrics"]}
        for probe in ("readinessProbe", "livenessProbe"):
            http = container[probe]["httpGet"]
            assert get(ports[http["port"]] + http["path"]) == 200, probe
        # Two pods share the group through Redis (the Lua script comes from the wheel).
        assert lock(ports["fleetlock"], "pre-reboot", "node-a", "workers")[0] == 200
        with urllib.request.urlopen(ports["metrics"] + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert 'lockd_group_holders{group="workers"} 1.0' in text
        assert "lockd_backend_up 1.0" in text
        assert call(ports["metrics"], "GET", "/api/v1/groups")[0] == 404  # no admin routes
    finally:
        server.stop()


# Prometheus and Grafana


def require_promtool() -> str:
    return find_binary("promtool", "prometheus (tests/ensure_servers.sh unpacks promtool)")


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = require_promtool()
    prom = DEPLOY / "prometheus"
    for argv in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]):
        done = subprocess.run(
            [promtool, *argv], cwd=prom, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "lockd-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    return exprs


def rule_exprs() -> list[str]:
    (doc,) = yaml_docs(DEPLOY / "prometheus" / "alerts.yaml")
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule that
    promtool parses."""
    promtool = require_promtool()
    rules = [
        {"record": f"lockd_dashboard:query_{i}",
         "expr": e.replace("$__rate_interval", "5m").replace("$group", ".*")}
        for i, e in enumerate(dashboard_exprs())
        if not e.startswith("label_values(")
    ]  # fmt: skip
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def exported_names(text: str) -> set[str]:
    """Every series name a scrape can carry: samples, and the families announced by
    ``# TYPE`` (a labelled counter has no sample before its first increment)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_rules_and_dashboard_use_only_metrics_lockd_exports(
    installed: Installed, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    argv = [installed.lockd, "serve", "--backend", f"sqlite://{tmp_path / 'lockd.db'}",
            "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
            "--group", "workers=2"]  # fmt: skip
    server = Served(argv, tmp_path / "lockd.log", {"PATH": "/usr/bin:/bin"}, cwd=tmp_path).start()
    try:
        url = f"http://127.0.0.1:{port}"
        assert lock(url, "pre-reboot", "node-a", "workers")[0] == 200
        assert lock(url, "steady-state", "node-a", "workers")[0] == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
            exported = exported_names(resp.read().decode())
    finally:
        server.stop()
    used = {
        name
        for expr in rule_exprs() + dashboard_exprs()
        for name in re.findall(r"\b(lockd_[a-z0-9_]+)", expr)
    }
    assert used, "no lockd_ metric found in the rules or the dashboard"
    assert used <= exported, sorted(used - exported)
    # The only other series the rules use is Prometheus' own `up`.
    others = (
        {n for e in rule_exprs() for n in re.findall(r"\b([a-z_][a-z0-9_]*)\s*[{\[(]", e)}
        - used
        - {"max", "sum", "rate", "by", "and", "printf", "humanizeDuration"}
    )
    assert others <= {"up"}, others


# Node side: Butane


def butane(name: str) -> dict[str, Any]:
    (doc,) = yaml_docs(DEPLOY / "nodes" / name)
    return doc


def test_butane_files_declare_variant_and_version() -> None:
    expected = {"fcos": {"1.4.0", "1.5.0", "1.6.0"}, "flatcar": {"1.0.0", "1.1.0"}}
    names = sorted(p.name for p in (DEPLOY / "nodes").glob("*.bu"))
    assert names == ["fcos-zincati.bu", "flatcar-fleetlock.bu", "flatcar-locksmith-etcd.bu"]
    for name in names:
        doc = butane(name)
        assert doc["version"] in expected[doc["variant"]], (name, doc["variant"], doc["version"])
        for f in doc["storage"]["files"]:
            assert f["path"].startswith("/") and isinstance(f["contents"]["inline"], str)
            assert isinstance(f.get("mode", 0o644), int)  # YAML 0644 is octal, an int
        text = (DEPLOY / "nodes" / name).read_text()
        assert "What to change" in text, name


def test_fcos_zincati_dropin_uses_fleet_lock_with_a_trailing_slash() -> None:
    files = butane("fcos-zincati.bu")["storage"]["files"]
    dropins = {f["path"]: tomllib.loads(f["contents"]["inline"]) for f in files}
    (strategy,) = [d for p, d in dropins.items() if p.startswith("/etc/zincati/config.d/")
                   and "updates" in d]  # fmt: skip
    assert strategy["updates"]["strategy"] == "fleet_lock"
    base_url = strategy["updates"]["fleet_lock"]["base_url"]
    assert base_url.startswith("http") and base_url.endswith("/")
    (identity,) = [d for d in dropins.values() if "identity" in d]
    assert is_group_name(identity["identity"]["group"])
    assert all(p.startswith("/etc/zincati/config.d/") and p.endswith(".toml") for p in dropins)


def test_flatcar_locksmith_update_conf_has_strategy_endpoint_and_window() -> None:
    files = butane_files(butane("flatcar-locksmith-etcd.bu"))
    conf = env_file(files["/etc/flatcar/update.conf"])
    assert conf["REBOOT_STRATEGY"] == "etcd-lock"
    endpoints = conf["LOCKSMITHD_ENDPOINT"].split(",")
    assert len(endpoints) >= 1 and all(e.startswith("http://") for e in endpoints)
    assert is_group_name(conf["LOCKSMITHD_GROUP"])
    # Both or neither (locksmithd refuses one alone); "Thu 04:00" and a Go duration.
    assert re.fullmatch(r"((Sun|Mon|Tue|Wed|Thu|Fri|Sat) )?\d\d:\d\d",
                        conf["LOCKSMITHD_REBOOT_WINDOW_START"])  # fmt: skip
    assert re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?", conf["LOCKSMITHD_REBOOT_WINDOW_LENGTH"])
    assert set(conf) <= {
        "REBOOT_STRATEGY", "LOCKSMITHD_ENDPOINT", "LOCKSMITHD_GROUP",
        "LOCKSMITHD_REBOOT_WINDOW_START", "LOCKSMITHD_REBOOT_WINDOW_LENGTH",
        "LOCKSMITHD_ETCD_CAFILE", "LOCKSMITHD_ETCD_CERTFILE", "LOCKSMITHD_ETCD_KEYFILE",
    }  # fmt: skip


def test_flatcar_fleetlock_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = find_binary("systemd-analyze", "systemd")
    doc = butane("flatcar-fleetlock.bu")
    (unit_spec,) = doc["systemd"]["units"]
    script = tmp_path / "fleetlock-reboot"
    script.write_text(butane_files(doc)["/opt/bin/fleetlock-reboot"])
    script.chmod(0o755)
    path = tmp_path / unit_spec["name"]
    path.write_text(unit_spec["contents"].replace("/opt/bin/fleetlock-reboot", str(script)))
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    service = unit_directives(unit_spec["contents"])["Service"]
    assert one(service, "EnvironmentFile") in butane_files(doc)


class FlatcarNode:
    """The Butane's client script on this machine: update_engine_client and systemctl
    replaced by stand-ins that read and record files, the script itself unchanged."""

    def __init__(self, tmp: Path, lockd_url: str, node_id: str) -> None:
        doc = butane("flatcar-fleetlock.bu")
        files = butane_files(doc)
        assert env_file(files["/etc/flatcar/update.conf"]) == {"REBOOT_STRATEGY": "off"}
        self.settings = env_file(files["/etc/flatcar/fleetlock.env"])
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        self.status = tmp / "update-status"
        self.status.write_text("CURRENT_OP=UPDATE_STATUS_IDLE\n")
        self.rebooted = tmp / "rebooted"
        (bin_dir / "update_engine_client").write_text(
            f'#!/bin/sh\n[ "$1" = -status ] && cat {self.status}\n'
        )
        (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {self.rebooted}\n')
        self.script = tmp / "fleetlock-reboot"
        self.script.write_text(files["/opt/bin/fleetlock-reboot"])
        for p in (self.script, bin_dir / "update_engine_client", bin_dir / "systemctl"):
            p.chmod(0o755)
        self.env = {
            **self.settings,
            "FLEETLOCK_URL": lockd_url + "/",
            "FLEETLOCK_INTERVAL": "0.1",
            "FLEETLOCK_ID": node_id,
            "PATH": f"{bin_dir}:/usr/bin:/bin",
        }
        self.proc = Proc([str(self.script)], tmp / "node.log", env=self.env)


def holders(admin_url: str, group: str) -> list[str]:
    return [h["id"] for h in call(admin_url, "GET", f"/api/v1/groups/{group}")[1]["holders"]]


def wait_until(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_flatcar_fleetlock_client_releases_at_boot_and_locks_before_reboot(
    tmp_path: Path,
) -> None:
    group = "workers"  # 2 slots in start_lockd's lockd
    lockd = start_lockd(tmp_path, "sqlite")
    try:
        flatcar_node_cycle(lockd, tmp_path, group)
    finally:
        lockd.stop()


def flatcar_node_cycle(lockd: Lockd, tmp_path: Path, group: str) -> None:
    node = FlatcarNode(tmp_path, lockd.url, "e0f3745b108f471cbd4883c6fbed8cdd")
    assert node.settings["FLEETLOCK_GROUP"] == group
    node_id = node.env["FLEETLOCK_ID"]
    # The node took its slot before the reboot that is now finishing.
    assert lock(lockd.url, "pre-reboot", node_id, group)[0] == 200
    node.proc.start()
    try:
        wait_until(lambda: node_id not in holders(lockd.admin_url, group), "steady-state")
        # The group fills up, then an update is staged: the node waits for a slot.
        assert lock(lockd.url, "pre-reboot", "other-1", group)[0] == 200
        assert lock(lockd.url, "pre-reboot", "other-2", group)[0] == 200
        node.status.write_text(
            "LAST_CHECKED_TIME=1\nCURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\n"
        )
        wait_until(lambda: "failed_lock_semaphore_full" in node.proc.output(), "refused")
        assert not node.rebooted.exists()
        assert lock(lockd.url, "steady-state", "other-1", group)[0] == 200
        wait_until(node.rebooted.exists, "reboot after the grant")
        assert node.rebooted.read_text().split() == ["reboot"]
        assert node_id in holders(lockd.admin_url, group)
        assert node.proc.proc is not None and node.proc.proc.wait(10) == 0
    finally:
        node.proc.stop()


# Every file under deploy/ parses; the example configs load


def test_every_toml_yaml_and_json_under_deploy_parses() -> None:
    seen = 0
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix == ".toml":
            tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml", ".bu"):
            assert yaml_docs(path), path
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:
            continue
        seen += 1
    assert seen >= 15


def test_example_configs_load_with_lockds_own_loader() -> None:
    settings = load(str(DEPLOY / "lockd.toml"), environ={})
    assert dict(settings.groups) == {"default": 1, "controllers": 1, "workers": 2}
    assert settings.admin_listen is not None and settings.admin_listen.host == "127.0.0.1"
    pod = pod_config()
    assert pod.metrics_listen is not None and pod.log_format == "json"
