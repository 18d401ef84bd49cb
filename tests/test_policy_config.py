"""The reboot policy's configuration: TOML, environment and flags in the one scheme, groups
overriding [lock]'s defaults key by key, and what a layout cannot store refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockd.config import ConfigError, load
from lockd.gates import PrometheusGate, WebhookGate
from lockd.policy import DEFAULT_HISTORY

FULL = """
[lock]
default_slots = 1
windows = [{days = ["Sat", "Sun"], start = "02:00", length = "2h", time_zone = "Europe/Berlin"}]
stale_after = "1h"
cooldown = "5m"
history = 30
gates = ["cluster"]
sweep_interval_s = 10

[[lock.groups]]
name = "workers"
slots = 3
windows = [{start = "Thu 23:00", length = "1h30m"}, "Wed 01:00 30m"]
expire_after = "6h"
gates = ["cluster", "ceph"]

[[lock.groups]]
name = "db"
windows = []
gates = []
cooldown = "off"

[[gates.prometheus]]
name = "cluster"
url = "http://prometheus:9090"
include = ["Node.*", "severity=critical|page"]
exclude = ["Watchdog"]
firing_only = true

[[gates.webhook]]
name = "ceph"
url = "http://ceph-health.internal/may-reboot"
timeout_s = 3

[gates]
cache_s = 10

[[notify.webhook]]
url = "https://chat.example/hooks/T0/B0/xyz"
template = '{"text": "lockd: $text"}'
events = ["grant", "release", "expiry"]

[notify]
retries = 3
backoff_s = 0.5
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "lockd.toml"
    path.write_text(text)
    return str(path)


def test_a_full_policy_file(tmp_path: Path) -> None:
    s = load(write(tmp_path, FULL), environ={})
    groups = s.group_settings()
    d = groups.policy_for("anything")
    assert d.windows.describe() == ["Sat,Sun 02:00 +2h Europe/Berlin"]
    assert (d.stale_after, d.expire_after, d.cooldown, d.history, d.gates) == \
        (3600.0, None, 300.0, 30, ("cluster",))
    assert d.report_stale  # native layout (sqlite by default): stale holders reported
    w = groups.policy_for("workers")
    assert w.windows.describe() == ["Thu 23:00 +1h30m UTC", "Wed 01:00 +30m UTC"]
    assert (w.expire_after, w.cooldown, w.stale_after) == (6 * 3600.0, 300.0, 3600.0)
    assert w.gates == ("cluster", "ceph") and s.groups["workers"] == 3
    db = groups.policy_for("db")
    assert not db.windows and db.gates == () and db.cooldown == 0 and s.groups["db"] == 1
    prom, hook = s.gates
    assert isinstance(prom, PrometheusGate) and prom.firing_only
    assert [p.label for p in prom.include] == ["alertname", "severity"]
    assert isinstance(hook, WebhookGate) and hook.timeout == 3
    assert s.gate_cache_s == 10 and s.sweep_interval == 10
    assert s.notify.retries == 3 and s.notify.webhooks[0].events == ("grant", "release",
                                                                       "expiry")


def test_environment_and_flags_follow_the_scheme(tmp_path: Path) -> None:
    path = write(tmp_path, "[[lock.groups]]\nname = 'workers'\nslots = 3\n")
    env = {
        "LOCKD_LOCK__WINDOWS": "Sat,Sun 02:00 2h Europe/Berlin; Wed 01:00 30m",
        "LOCKD_LOCK__COOLDOWN": "90s",
        # JSON tables: a group's policy keys merge with the file's entry (slots stay 3).
        "LOCKD_LOCK__GROUPS": '[{"name": "workers", "expire_after": "2h"}]',
        "LOCKD_GATES__WEBHOOK": '[{"name": "hook", "url": "http://127.0.0.1:1/"}]',
    }
    s = load(path, environ=env, overrides={"lock.gates": "hook", "lock.stale_after": "off"})
    assert s.groups["workers"] == 3
    w = s.group_settings().policy_for("workers")
    assert (w.expire_after, w.cooldown, w.gates, w.stale_after) == (7200.0, 90.0, ("hook",),
                                                                    None)
    assert len(s.group_policy.windows.windows) == 2
    assert s.group_policy.history == DEFAULT_HISTORY


AIRLOCK = "etcd://127.0.0.1:2379?layout=airlock"
LOCKSMITH = "etcd2://127.0.0.1:2379"


@pytest.mark.parametrize("url", [AIRLOCK, LOCKSMITH])
@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[lock]\ncooldown = '5m'\n", "lock.cooldown"),
        ("[lock]\nexpire_after = '1h'\n", "lock.expire_after"),
        ("[lock]\nhistory = 10\n", "lock.history"),
        ("[[lock.groups]]\nname = 'w'\ncooldown = '5m'\n", "lock.groups (group 'w'): cooldown"),
    ],
)
def test_what_a_foreign_layout_cannot_store_is_refused_by_name(
    tmp_path: Path, url: str, text: str, key: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text), environ={"LOCKD_STORAGE__BACKEND": url})
    message = str(err.value)
    assert message.startswith(key) and "native layout" in message
    assert "windows, stale_after and health gates work on every layout" in message


@pytest.mark.parametrize("url", [AIRLOCK, LOCKSMITH])
def test_windows_gates_and_stale_work_on_every_layout(tmp_path: Path, url: str) -> None:
    text = ("[lock]\nwindows = ['Sat 02:00 1h']\nstale_after = '1h'\ngates = ['h']\n"
            "cooldown = 'off'\nhistory = 0\n"
            "[[gates.webhook]]\nname = 'h'\nurl = 'http://127.0.0.1:1/'\n")
    s = load(write(tmp_path, text), environ={"LOCKD_STORAGE__BACKEND": url})
    p = s.group_policy
    assert p.windows and p.stale_after == 3600 and p.gates == ("h",)
    assert p.history == 0 and not p.report_stale  # the built-in history is simply off here


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[lock]\nwindows = ['Caturday 02:00 1h']\n", "lock.windows .*not a weekday"),
        ("[lock]\ncooldown = 'soon'\n", "lock.cooldown .*duration"),
        ("[lock]\nhistory = 5000\n", "lock.history .*0 to 1000"),
        ("[lock]\ngates = ['nope']\n", "lock.gates: no gate named 'nope'"),
        ("[[lock.groups]]\nname = 'w'\ngates = ['nope']\n",
         r"lock.groups \(group 'w'\): gates: no gate named"),
        ("[[lock.groups]]\nname = 'w'\nwindows = [{start = '02:00'}]\n",
         "group 'w': windows: window 1: a window needs a length"),
        ("[[lock.groups]]\nname = 'w'\ncoldown = '5m'\n", "unknown key 'coldown'"),
        ("[lock]\nstale_after = '2h'\nexpire_after = '1h'\n", "shorter than expire_after"),
        ("[[gates.prometheus]]\nname = 'p'\nurl = 'prometheus:9090'\n", "url must be"),
        ("[[gates.prometheus]]\nname = 'p'\nurl = 'http://p/'\ninclude = ['(']\n",
         "not a regular expression"),
        ("[[gates.prometheus]]\nname = 'p'\nurl = 'http://p/'\napi = 'thanos'\n", "api must"),
        ("[[gates.prometheus]]\nname = 'p'\nurl = 'http://p/'\n"
         "[[gates.webhook]]\nname = 'p'\nurl = 'http://q/'\n", "two gates are named 'p'"),
        ("[[notify.webhook]]\nurl = 'http://n/'\nevents = ['reboot']\n", "events must be"),
        ("", "LOCKD_GATES__PROMETHEUS.*JSON"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    env = {"LOCKD_GATES__PROMETHEUS": "not json"} if not text else {}
    with pytest.raises(ConfigError, match=needle):
        load(write(tmp_path, text), environ=env)


def test_every_example_in_docs_policy_loads(tmp_path: Path) -> None:
    import re

    from bench.procs import REPO

    text = (REPO / "docs" / "policy.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        load(write(tmp_path, block), environ={})
    env = dict(re.findall(r"^(LOCKD_[A-Z_]+)=(.*)$", text, re.M))
    env = {k: v.strip("'\"") if v[:1] == v[-1:] and v[:1] in "'\"" else v
           for k, v in env.items()}
    s = load(environ=env)
    assert s.group_policies["db"].expire_after == 7200 and s.notify.webhooks
