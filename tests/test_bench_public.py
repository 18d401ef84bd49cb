"""bench/public.py writes its many tenants straight into the store: what it writes must be
what lockd itself reads, a holder per tenant and its group listed by name, or the benchmark
measures something other than tenants holding slots."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.procs import Lockd
from bench.public import PEPPER, populate, public_env
from bench.throughput import post
from lockd.tenancy import new_token
from tests.httpcall import call


def test_populated_tenants_hold_their_slot_as_lockd_sees_it(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'many.db'}"
    tokens = [new_token() for _ in range(50)]
    asyncio.run(populate(url + "?synchronous=off", tokens))
    server = Lockd(tmp_path, "--backend", url, "--default-slots", "1",
                   env={**public_env(), "LOCKD_PUBLIC__PEPPER": PEPPER}).start()
    try:
        for token in (tokens[0], tokens[-1]):
            base = f"{server.url}/t/{token}"
            assert post(base, "pre-reboot", "holder", "g") == 200  # re-lock: held already
            assert post(base, "pre-reboot", "someone-else", "g") == 423
            status, doc = call(server.url, "GET", f"/t/{token}/v1/groups")
            assert status == 200
            assert [(g["name"], [h["id"] for h in g["holders"]]) for g in doc["groups"]] \
                == [("g", ["holder"])]
        # A tenant that was not written is a fresh one: its first grant is a grant.
        assert post(f"{server.url}/t/{new_token()}", "pre-reboot", "holder", "g") == 200
    finally:
        server.stop()
