"""Configuration: TOML (lockd's and airlock's), environment, flags, and errors naming keys."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.procs import REPO, Lockd
from bench.servers import EtcdServer
from lockd.config import ConfigError, load
from tests.httpcall import lock

# coreos/airlock's dist/examples/config.toml, byte for byte: the file airlock users copy.
AIRLOCK_EXAMPLE = Path(__file__).parent / "data" / "airlock-example-config.toml"
AIRLOCK_TOML = AIRLOCK_EXAMPLE.read_text()


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


def test_airlocks_example_is_read_unchanged() -> None:
    s = load(str(AIRLOCK_EXAMPLE), environ={})
    assert (s.listen.host, s.listen.port) == ("127.0.0.1", 3333)
    assert s.metrics_listen is not None and s.metrics_listen.port == 2222
    assert s.backend_url == "etcd://127.0.0.1:2379?layout=airlock"
    groups = s.group_settings()
    assert groups.slots_for("controllers") == 1
    assert groups.slots_for("workers") == 2  # no slots: default_slots, as in airlock
    assert groups.slots_for("default") == 2
    # airlock refuses groups it does not list, and so does lockd under airlock's file.
    assert s.strict_groups and groups.slots_for("other") is None
    s = load(str(AIRLOCK_EXAMPLE), environ={"LOCKD_LOCK__STRICT_GROUPS": "false"})
    assert s.group_settings().slots_for("other") == 2


@pytest.mark.parametrize("section", ["service", "status"])
def test_tls_true_is_refused_naming_the_key_and_the_way(tmp_path: Path, section: str) -> None:
    text = AIRLOCK_TOML.replace("tls = false", "tls = true", 2 if section == "service" else 1)
    if section == "service":
        text = text.replace("tls = true", "tls = false", 1)
    with pytest.raises(ConfigError, match=rf"{section}\.tls .*reverse proxy"):
        load(write(tmp_path, text), environ={})


def test_flag_and_environment_groups_add_to_the_files(tmp_path: Path) -> None:
    path = write(tmp_path, "[[lock.groups]]\nname = 'controllers'\nslots = 1\n"
                           "[[lock.groups]]\nname = 'workers'\nslots = 3\n")
    s = load(path, environ={"LOCKD_LOCK__GROUPS": "db=4"}, overrides={"lock.groups": "extra=2"})
    assert dict(s.groups) == {"controllers": 1, "workers": 3, "db": 4, "extra": 2, "default": 1}
    s = load(path, environ={}, overrides={"lock.groups": "workers=5"})
    assert s.groups["workers"] == 5 and s.groups["controllers"] == 1


def test_a_bad_group_entry_is_named_without_the_whole_list(tmp_path: Path) -> None:
    text = "".join(f"[[lock.groups]]\nname = 'g{i}'\nslots = {i + 1}\n" for i in range(5))
    text += "[[lock.groups]]\nname = 'bad'\nslots = 0\n"
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text), environ={})
    assert "group 'bad'" in str(err.value) and "g3" not in str(err.value)


@pytest.mark.parametrize("kind", ["directory", "fifo", "binary", "unreadable"])
def test_a_config_path_that_is_not_a_text_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text("[lock]\n")
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads anything: use a path it cannot open
            path = tmp_path / "missing-dir" / "config.toml"
    with pytest.raises(ConfigError, match=str(path)):
        load(str(path), environ={})


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


def test_airlocks_example_serves_with_airlocks_group_semantics(tmp_path: Path) -> None:
    """lockd started from airlock's own file (only its etcd endpoint and ports pointed at
    this test's servers, through the environment) serves airlock's groups and refuses
    others as airlock does."""
    etcd = EtcdServer(tmp_path / "etcd").start()
    env = {
        "LOCKD_ETCD3__ENDPOINTS": f"http://{etcd.endpoint}",
        "LOCKD_STATUS__PORT": "0",
    }
    lockd = Lockd(tmp_path, "--config", str(AIRLOCK_EXAMPLE), env=env).start()
    try:
        assert lock(lockd.url, "pre-reboot", "a", "workers")[0] == 200
        assert lock(lockd.url, "pre-reboot", "b", "workers")[0] == 200
        assert lock(lockd.url, "pre-reboot", "c", "workers")[0] == 423  # default_slots = 2
        assert lock(lockd.url, "pre-reboot", "c", "controllers")[0] == 200
        status, body = lock(lockd.url, "pre-reboot", "c", "unlisted")
        assert (status, body["kind"]) == (404, "unknown_group")
    finally:
        assert lockd.stop() == 0
        etcd.stop()


def _serve_fails(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockd", "serve", *args], capture_output=True, text=True,
        cwd=REPO, timeout=30,
    )


def test_a_taken_admin_port_is_named_by_its_keys(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve_fails("--backend", "memory://", "--listen", "127.0.0.1:0",
                            "--admin-listen", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert "admin.address/admin.port" in proc.stderr and "Traceback" not in proc.stderr


def test_an_unwritable_state_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = _serve_fails("--state-dir", str(blocker / "state"), "--listen", "127.0.0.1:0",
                        "--no-admin")
    assert proc.returncode == 2
    assert "storage.state_dir" in proc.stderr and "Traceback" not in proc.stderr


def test_an_unreadable_token_file_is_named(tmp_path: Path) -> None:
    proc = _serve_fails("--backend", "memory://", "--listen", "127.0.0.1:0",
                        "--admin-token-file", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "admin.token_file" in proc.stderr and "Traceback" not in proc.stderr


def test_sighup_names_the_keys_that_need_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "lockd.toml"
    config.write_text("[service]\nmax_body_bytes = 4096\n")
    lockd = Lockd(tmp_path, "--config", str(config), "--backend", "memory://").start()
    try:
        config.write_text("[service]\nmax_body_bytes = 8192\n[lock]\ndefault_slots = 3\n")
        lockd.proc.signal(signal.SIGHUP)  # type: ignore[union-attr]
        lockd.wait_for_output("not applied until a restart: max_body_bytes")
        assert "applied default_slots=3" in lockd.proc.output()  # type: ignore[union-attr]
    finally:
        assert lockd.stop() == 0


def test_public_mode_reads_its_pepper_from_a_file_or_the_environment(tmp_path: Path) -> None:
    pepper = tmp_path / "pepper"
    pepper.write_text("k" * 40 + "\n")
    text = f'[public]\nenabled = true\npepper_file = "{pepper}"\n[storage]\nbackend = "memory://"\n'
    s = load(write(tmp_path, text), environ={})
    assert s.public_enabled and s.public_pepper == b"k" * 40
    assert "k" * 40 not in repr(s)
    s = load(environ={"LOCKD_PUBLIC__ENABLED": "1", "LOCKD_PUBLIC__PEPPER": "e" * 40,
                      "LOCKD_STORAGE__BACKEND": "memory://"})
    assert s.public_pepper == b"e" * 40


def test_public_mode_refuses_a_weak_or_misplaced_pepper(tmp_path: Path) -> None:
    env = {"LOCKD_PUBLIC__ENABLED": "true", "LOCKD_STORAGE__BACKEND": "memory://"}
    with pytest.raises(ConfigError, match=r"public\.pepper_file"):
        load(environ=env)
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        load(environ={**env, "LOCKD_PUBLIC__PEPPER": "short"})
    with pytest.raises(ConfigError, match="out of the configuration file"):
        load(write(tmp_path, '[public]\nenabled = true\npepper = "' + "x" * 40 + '"\n'),
             environ={})
    with pytest.raises(ConfigError, match="own layout"):
        load(environ={**env, "LOCKD_PUBLIC__PEPPER": "x" * 40,
                      "LOCKD_STORAGE__BACKEND": "etcd2://127.0.0.1:2379"})


def test_the_view_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    s = load(environ={})
    assert (s.view, s.view_max_age) == (True, 1.0)
    s = load(write(tmp_path, "[storage]\nview = false\nview_max_age_s = 2.5\n"), environ={})
    assert (s.view, s.view_max_age) == (False, 2.5)
    s = load(environ={"LOCKD_STORAGE__VIEW": "false"})
    assert s.view is False
    with pytest.raises(ConfigError, match="view_max_age_s"):
        load(environ={}, overrides={"storage.view_max_age_s": "0"})
