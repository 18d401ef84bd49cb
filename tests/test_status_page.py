"""The status page in a real headless Chromium: the holders just created are in the rendered
DOM, a screenshot is taken (kept in the test's tmp dir), and the page needs nothing but the
admin listener (no external assets: every other host is unresolvable for the browser)."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import Lockd
from lockd.admin import STATUS_PAGE
from tests.browser import chromium
from tests.test_admin import call, lock, start_lockd

HOLDERS = {
    "workers": ["e0f3745b108f471cbd4883c6fbed8cdd", "node-beta-91d2"],
    "db": ["db-primary-7"],
}


def section(dom: str, group: str) -> str:
    match = re.search(
        rf'<section class="group" data-group="{re.escape(group)}">(.*?)</section>', dom, re.S
    )
    assert match is not None, f"group {group} not rendered:\n{dom[-3000:]}"
    return match.group(1)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def lockd(tmp_path: Path) -> Iterator[Lockd]:
    server = start_lockd(tmp_path, "sqlite", "--group", "db=1")
    try:
        for group, ids in HOLDERS.items():
            for id_ in ids:
                assert lock(server.url, "pre-reboot", id_, group)[0] == 200
        assert call(server.admin_url, "POST", "/api/v1/groups/db/pause")[0] == 200
        yield server
    finally:
        server.stop()


def test_holders_render_in_chromium(lockd: Lockd, tmp_path: Path) -> None:
    dom = chromium(tmp_path, lockd.admin_url + "/", "--dump-dom")
    workers = section(dom, "workers")
    for id_ in HOLDERS["workers"]:
        assert f'data-holder="{id_}"' in workers and f">{id_}</td>" in workers
    assert "2 of 2 slots held" in workers and 'class="badge full"' in workers
    db = section(dom, "db")
    assert f">{HOLDERS['db'][0]}</td>" in db and 'class="badge paused"' in db
    default = section(dom, "default")
    assert "no holders" in default and "data-holder" not in default
    # each holder's age is shown ("3s", "1m 2s"...)
    ages = re.findall(r'<td class="age"[^>]*>([^<]+)</td>', dom)
    assert len(ages) == 3 and all(re.fullmatch(r"\d+[smhd]( \d+[smh])?", a) for a in ages)
    assert "3 groups · 3 holders" in dom

    # a freed slot leaves the holders at the next load, for the recent reboots
    call(lockd.admin_url, "POST", "/api/v1/groups/workers/unlock", {"id": "node-beta-91d2"})
    dom = chromium(tmp_path, lockd.admin_url + "/", "--dump-dom")
    assert 'data-holder="node-beta-91d2"' not in dom and HOLDERS["workers"][0] in dom
    assert 'class="reboot operator" data-reboot="node-beta-91d2"' in dom

    # screenshots, phone and desktop; kept in tmp_path for a look
    for name, width, height in (("phone", 412, 915), ("desktop", 1280, 800)):
        shot = tmp_path / f"status-{name}.png"
        chromium(tmp_path, lockd.admin_url + "/", f"--screenshot={shot}", width=width,
                 height=height)
        assert png_size(shot) == (width, height)
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank image
        print(f"status page screenshot: {shot}")


def test_page_with_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("page-token\n")
    server = start_lockd(tmp_path, "memory", "--admin-token-file", str(token))
    try:
        assert lock(server.url, "pre-reboot", "node-with-token", "workers")[0] == 200
        dom = chromium(tmp_path, server.admin_url + "/", "--dump-dom")
        assert "admin token required" in dom and "node-with-token" not in dom
        dom = chromium(tmp_path, server.admin_url + "/#token=page-token", "--dump-dom")
        assert 'data-holder="node-with-token"' in dom
    finally:
        server.stop()


def test_page_is_self_contained() -> None:
    page = STATUS_PAGE.read_text()
    # no external scripts, styles, fonts or images: the page works air-gapped
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert '<meta name="viewport"' in page  # readable on a phone


def test_policy_stale_holders_and_reboot_timeline_render(tmp_path: Path) -> None:
    config = tmp_path / "lockd.toml"
    config.write_text(
        '[lock]\nstale_after = "1s"\nsweep_interval_s = 0.2\n'
        '[[lock.groups]]\nname = "workers"\nslots = 2\ncooldown = "1h"\n'
        'windows = ["daily 00:00 1d UTC"]\n'
    )
    server = Lockd(tmp_path, "--config", str(config), "--backend",
                   f"sqlite://{tmp_path / 'page.db'}").start()
    try:
        for node in ("node-one", "node-two"):
            assert lock(server.url, "pre-reboot", node, "workers")[0] == 200
        assert lock(server.url, "steady-state", "node-one", "workers")[0] == 200
        assert lock(server.url, "steady-state", "node-two", "workers")[0] == 200
        call(server.admin_url, "PUT", "/api/v1/groups/workers/slots", {"slots": 3})
        assert lock(server.url, "pre-reboot", "node-slow", "workers")[0] == 200
        import time

        time.sleep(1.5)  # node-slow turns stale
        dom = chromium(tmp_path, server.admin_url + "/", "--dump-dom")
        shot = tmp_path / "status-policy.png"
        chromium(tmp_path, server.admin_url + "/", f"--screenshot={shot}", width=1280,
                 height=800)
        print(f"status page screenshot: {shot}")
    finally:
        server.stop()
    workers = section(dom, "workers")
    assert re.search(r'data-holder="node-slow".*?class="badge stale"', workers, re.S)
    assert "Recent reboots" in workers
    assert re.findall(r'data-reboot="([^"]+)"', workers) == ["node-two", "node-one"]
    assert "cooldown 1h" in workers and "slot(s) resting" in workers
    assert "stale after 1s · 1 stale" in workers and "window open" in workers
