"""The operator CLI (``lockd status|groups|unlock|set-max|pause|resume``) end to end.

Each command runs against a real ``lockd serve`` on memory:// and on sqlite://, in this
process through ``lockd.cli.main`` (fast), and once as a real ``lockd`` process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.procs import REPO, Lockd, free_port, start_lockd
from lockd.cli import main
from tests.httpcall import call, lock


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``lockd ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse refusing a value
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command(lockd: Lockd, capsys: pytest.CaptureFixture[str]) -> None:
    s = ("--server", lockd.admin_url)
    for node in ("node-a", "node-b"):
        assert lock(lockd.url, "pre-reboot", node, "workers")[0] == 200

    code, out, _ = run(capsys, "status", "workers", *s)
    assert code == 0
    lines = out.splitlines()
    assert lines[:3] == ["Available: 0", "Max: 2", ""]  # locksmithctl's layout
    assert lines[3].split()[:2] == ["MACHINE", "ID"]
    holders = [line.split() for line in lines[4:]]
    assert [h[0] for h in holders] == ["node-a", "node-b"]
    assert all(re.fullmatch(r"\d+s", h[1]) for h in holders)  # age
    assert [h[-1] for h in holders] == ["#1", "#2"]

    code, out, _ = run(capsys, "status", *s)
    assert code == 0
    assert "Group: default\nAvailable: 1\nMax: 1\n" in out
    assert "Group: workers\nAvailable: 0\nMax: 2\n" in out

    code, out, _ = run(capsys, "status", "workers", "--json", *s)
    doc = json.loads(out)
    assert code == 0 and [h["id"] for h in doc["holders"]] == ["node-a", "node-b"]

    code, out, _ = run(capsys, "groups", *s)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["GROUP", "SLOTS", "HOLDERS", "AVAILABLE", "PAUSED"]
    assert rows[1:] == [["default", "1", "0", "1", "no"], ["workers", "2", "2", "0", "no"]]
    code, out, _ = run(capsys, "groups", "--json", *s)
    assert code == 0 and [g["name"] for g in json.loads(out)["groups"]] == ["default", "workers"]

    code, out, _ = run(capsys, "set-max", "3", "--group", "workers", *s)
    assert (code, out) == (0, "Old-Max: 2\nMax: 3\n")
    assert call(lockd.admin_url, "GET", "/api/v1/groups/workers")[1]["slots"] == 3

    code, out, _ = run(capsys, "pause", "workers", *s)
    assert (code, out) == (0, "Group workers paused\n")
    code, out, _ = run(capsys, "pause", "workers", *s)
    assert (code, out) == (0, "Group workers was already paused\n")
    status, doc = lock(lockd.url, "pre-reboot", "node-c", "workers")
    assert (status, doc["kind"]) == (423, "failed_lock_group_paused")
    code, out, _ = run(capsys, "status", "workers", *s)
    assert out.splitlines()[:4] == ["Available: 1", "Max: 3", "Paused: yes (no new grants)", ""]
    code, out, _ = run(capsys, "resume", "workers", "--json", *s)
    assert code == 0 and json.loads(out)["changed"] is True
    assert lock(lockd.url, "pre-reboot", "node-c", "workers")[0] == 200

    code, out, _ = run(capsys, "unlock", "node-b", "--group", "workers", *s)
    assert (code, out) == (0, "Unlocked node-b in group workers\n")
    g = call(lockd.admin_url, "GET", "/api/v1/groups/workers")[1]
    assert [h["id"] for h in g["holders"]] == ["node-a", "node-c"]

    # the event log names the operator who ran the command
    actors = [
        json.loads(line)["actor"]
        for line in lockd.proc.output().splitlines()  # type: ignore[union-attr]
        if line.startswith("{") and '"admin_change"' in line
    ]
    assert len(actors) == 5 and all(a.endswith("(lockd ctl)") and "@" in a for a in actors)


def test_error_paths(lockd: Lockd, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    s = ("--server", lockd.admin_url)
    assert lock(lockd.url, "pre-reboot", "node-a", "workers")[0] == 200

    # unknown group: the server says so, exit 1
    for argv in (
        ("status", "nope"),
        ("pause", "nope"),
        ("resume", "nope"),
        ("set-max", "2", "--group", "nope"),
        ("unlock", "node-a", "--group", "nope"),
    ):
        code, out, err = run(capsys, *argv, *s)
        assert code == 1 and out == "", argv
        assert "nope" in err and "unknown_group" in err, err
    # an id that holds nothing
    code, _, err = run(capsys, "unlock", "ghost", "--group", "workers", *s)
    assert code == 1 and "ghost" in err and "not_found" in err

    # bad values are refused before asking: exit 2
    for argv in (
        ("set-max", "0", "--group", "workers", *s),
        ("set-max", "-1", "--group", "workers", *s),
        ("set-max", "many", "--group", "workers", *s),
        ("status", "bad/group", *s),
        ("pause", "bad_group", *s),
        ("unlock", "node-a", "--group", "no spaces", *s),
        ("status", "--server", "127.0.0.1:8081"),
        ("status", "--token-file", str(tmp_path / "missing"), *s),
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", argv
        assert err.strip(), argv

    # unreachable server: exit 3 with a message naming the URL
    dead = f"http://127.0.0.1:{free_port()}"
    for argv in (("status",), ("groups",), ("pause", "workers"), ("set-max", "2", "-g", "x")):
        code, out, err = run(capsys, *argv, "--server", dead)
        assert code == 3 and out == "" and dead in err and "cannot reach" in err, argv
    # something that is not lockd's admin API (the FleetLock listener): exit 1, not a crash
    code, _, err = run(capsys, "status", "workers", "--server", lockd.url)
    assert code == 1 and "not_found" in err
    # a 200 JSON answer that is not the admin API's (here /healthz): exit 3, no traceback
    code, _, err = run(capsys, "groups", "--server", lockd.url + "/healthz?path=")
    assert code == 3 and "unexpected answer" in err and "Traceback" not in err

    # nothing above changed anything
    g = call(lockd.admin_url, "GET", "/api/v1/groups/workers")[1]
    assert (g["slots"], g["paused"], [h["id"] for h in g["holders"]]) == (2, False, ["node-a"])


def test_token(tmp_path: Path, capsys: pytest.CaptureFixture[str],
               monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("right-token\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-token\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    server = start_lockd(tmp_path, "sqlite", "--admin-token-file", str(token))
    s = ("--server", server.admin_url)
    try:
        code, _, err = run(capsys, "pause", "workers", *s)
        assert code == 4 and "not authorized" in err and "--token-file" in err
        code, _, err = run(capsys, "pause", "workers", *s, "--token-file", str(wrong))
        assert code == 4 and "wrong token" in err
        code, _, err = run(capsys, "status", *s, "--token-file", str(empty))
        assert code == 2 and "empty" in err
        g = call(server.admin_url, "GET", "/api/v1/groups/workers", token="right-token")[1]
        assert g["paused"] is False

        code, out, _ = run(capsys, "pause", "workers", *s, "--token-file", str(token))
        assert (code, out) == (0, "Group workers paused\n")
        # the environment works as well as the flags
        monkeypatch.setenv("LOCKD_ADMIN_URL", server.admin_url)
        monkeypatch.setenv("LOCKD_ADMIN_TOKEN_FILE", str(token))
        code, out, _ = run(capsys, "status", "workers")
        assert code == 0 and "Paused: yes" in out
    finally:
        server.stop()


def test_console_script(tmp_path: Path) -> None:
    """The real ``lockd`` process: exit codes reach the shell."""
    server = start_lockd(tmp_path, "memory")
    try:
        assert lock(server.url, "pre-reboot", "node-a", "default")[0] == 200

        def lockd_cli(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "lockd", *argv, "--server", server.admin_url],
                capture_output=True, text=True, cwd=REPO, timeout=30,
            )

        done = lockd_cli("status", "default")
        assert done.returncode == 0 and done.stdout.startswith("Available: 0\nMax: 1\n\n")
        assert "node-a" in done.stdout
        done = lockd_cli("unlock", "node-a")  # --group defaults to "default"
        assert done.returncode == 0
        done = lockd_cli("unlock", "node-a")
        assert done.returncode == 1 and "holds no slot" in done.stderr
    finally:
        server.stop()


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("serve", "status", "groups", "unlock", "set-max", "pause", "resume"):
        assert name in out
    # an unreachable default server is a clean error, not a traceback
    code, _, err = run(capsys, "groups", "--server", f"http://127.0.0.1:{free_port()}")
    assert code == 3 and "Traceback" not in err


def test_lockd_without_admin_listener(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = Lockd(tmp_path, "--backend", "memory://", "--no-admin").start()
    try:
        assert "admin" not in server.urls
        # pointing the CLI at the FleetLock listener fails cleanly
        code, _, err = run(capsys, "groups", "--server", server.url)
        assert code == 1 and "not_found" in err
    finally:
        server.stop()


def test_status_shows_the_reboot_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lockd.toml"
    config.write_text(
        '[lock]\nstale_after = "1s"\nsweep_interval_s = 0.2\n'
        '[[lock.groups]]\nname = "workers"\nslots = 2\ncooldown = "1h"\n'
        '[[lock.groups]]\nname = "closed"\nwindows = ["Mon 00:00 1s UTC"]\n'
    )
    server = Lockd(tmp_path, "--config", str(config), "--backend", "memory://").start()
    try:
        s = ("--server", server.admin_url)
        for node in ("node-a", "node-b"):
            assert lock(server.url, "pre-reboot", node, "workers")[0] == 200
        assert lock(server.url, "steady-state", "node-a", "workers")[0] == 200
        import time

        time.sleep(1.2)
        code, out, _ = run(capsys, "status", "workers", *s)
        assert code == 0
        lines = out.splitlines()
        assert lines[:2] == ["Available: 1", "Max: 2"]  # locksmithctl's lines stay first
        assert "Cooldown: 1h, 1 slot(s) resting until " in out
        assert "Stale after: 1s (1 stale)" in out
        assert re.search(r"^node-b .* #2  STALE$", out, re.M)
        assert "RECENT REBOOTS (newest first)" in out and re.search(r"^node-a  \d+s until ", out,
                                                                    re.M)
        code, out, _ = run(capsys, "status", "closed", *s)
        assert re.search(r"^Window: closed, opens \S+\+00:00\[UTC\] \(Mon 00:00 \+1s UTC\)$",
                         out, re.M)
    finally:
        server.stop()
