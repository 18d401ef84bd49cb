"""Configuration: TOML (lockd's and airlock's), environment, flags, and errors naming keys."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lockd.config import ConfigError, load
from tests.httpcall import lock
from tests.procs import REPO, Lockd

AIRLOCK_TOML = """\
# airlock's own example configuration, unchanged
[service]
address = "127.0.0.1"
port = 3333

[status]
enabled = true
address = "127.0.0.1"
port = 2222

[lock]
default_group_name = "default"
default_slots = 2

[[lock.groups]]
name = "controllers"
slots = 1

[[lock.groups]]
name = "workers"
slots = 3
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    s = load(environ={})
    assert (s.listen.host, s.listen.port) == ("127.0.0.1", 8080)
    assert s.backend_url.startswith("sqlite://") and s.backend_url.endswith("/lockd.db")
    assert s.group_settings().slots_for("anything") == 1


def test_relative_state_dir_becomes_absolute(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    s = load(environ={}, overrides={"storage.state_dir": "state"})
    assert s.backend_url == f"sqlite://{tmp_path / 'state' / 'lockd.db'}"


def test_airlock_config_is_read_unchanged(tmp_path: Path) -> None:
    s = load(write(tmp_path, AIRLOCK_TOML), environ={})
    assert (s.listen.host, s.listen.port) == ("127.0.0.1", 3333)
    assert s.metrics_listen is not None and s.metrics_listen.port == 2222
    groups = s.group_settings()
    assert groups.slots_for("controllers") == 1
    assert groups.slots_for("workers") == 3
    assert groups.slots_for("default") == 2
    assert groups.slots_for("other") == 2  # default_slots for unlisted groups


def test_environment_then_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, AIRLOCK_TOML)
    env = {
        "LOCKD_LOCK__DEFAULT_SLOTS": "5",
        "LOCKD_SERVICE__PORT": "4444",
        "LOCKD_LOCK__GROUPS": "db=4",
    }
    s = load(path, environ=env)
    assert s.default_slots == 5 and s.listen.port == 4444 and s.groups["db"] == 4
    s = load(path, environ=env, overrides={"lock.default_slots": 7})
    assert s.default_slots == 7


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("[lock]\ndefault_slots = 0\n", {}, "lock.default_slots"),
        ("[lock]\ndefault_slots = 'two'\n", {}, "lock.default_slots"),
        ("[service]\nport = 70000\n", {}, "service.port"),
        ("[lock]\nstrict = true\n", {}, "lock.strict"),
        ("[[lock.groups]]\nname = 'bad group'\nslots = 1\n", {}, "lock.groups"),
        ("[[lock.groups]]\nname = 'w'\nslots = 0\n", {}, "lock.groups"),
        ("[storage]\nbackend = 'mongodb://x'\n", {}, "storage.backend"),
        ("[storage]\nbackend = 'sqlite://host/x.db'\n", {}, "storage.backend"),
        ("", {"LOCKD_LOCK__DEFAULT_SLOTS": "-1"}, "LOCKD_LOCK__DEFAULT_SLOTS"),
        ("", {"LOCKD_LOCK__NOPE": "1"}, "LOCKD_LOCK__NOPE"),
        ("[admin]\ntoken_file = '/nonexistent/token'\n", {}, "admin.token_file"),
        ("[service]\nport = 9000\n[admin]\nport = 9000\n", {}, "admin.address/port"),
        ("not toml [", {}, "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        load(write(tmp_path, text), environ=env)


def test_bad_config_fails_at_startup_naming_the_key() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lockd", "serve", "--set", "lock.default_slots=0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "lock.default_slots" in proc.stderr and "at least 1" in proc.stderr


def test_serve_help_explains_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lockd", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=True,
    ).stdout
    for flag in (
        "--config",
        "--listen",
        "--backend",
        "--state-dir",
        "--default-slots",
        "--group",
        "--strict-groups",
        "--log-format",
        "--set",
        "LOCKD_",
    ):
        assert flag in out


def test_sighup_reload_changes_slots_live(tmp_path: Path) -> None:
    config = tmp_path / "lockd.toml"
    config.write_text("[[lock.groups]]\nname = 'workers'\nslots = 1\n")
    lockd = Lockd(
        tmp_path, "--config", str(config), "--backend", "memory://", "--log-format", "json"
    ).start()
    try:
        assert lock(lockd.url, "pre-reboot", "a", "workers")[0] == 200
        assert lock(lockd.url, "pre-reboot", "b", "workers")[0] == 423
        config.write_text("[[lock.groups]]\nname = 'workers'\nslots = 2\n")
        lockd.proc.signal(signal.SIGHUP)  # type: ignore[union-attr]
        lockd.wait_for_output("configuration reloaded")
        assert lock(lockd.url, "pre-reboot", "b", "workers")[0] == 200
        assert lock(lockd.url, "pre-reboot", "c", "workers")[0] == 423
        # A broken file is refused and the running configuration kept.
        config.write_text("[[lock.groups]]\nname = 'workers'\nslots = 0\n")
        lockd.proc.signal(signal.SIGHUP)  # type: ignore[union-attr]
        lockd.wait_for_output("reload refused")
        assert lock(lockd.url, "steady-state", "a", "workers")[0] == 200
        assert lock(lockd.url, "pre-reboot", "c", "workers")[0] == 200
    finally:
        assert lockd.stop() == 0
    # --log-format json: every decision line is one JSON object with group, id, outcome.
    lines = [
        json.loads(line)
        for line in lockd.proc.output().splitlines()  # type: ignore[union-attr]
        if line.startswith("{")
    ]
    decisions = [d for d in lines if d.get("logger") == "lockd.decision"]
    assert {"group": "workers", "id": "b", "outcome": "full"}.items() <= decisions[1].items()
    assert any(d["outcome"] == "granted" and d["id"] == "c" for d in decisions)
