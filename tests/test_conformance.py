"""Every wire-level case real clients send (tests/data/conformance_clients.json, copied from
the project's shared conformance cases), replayed byte for byte over real HTTP on every
backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lockd.config import Settings
from lockd.frontend import create_app
from tests.rawhttp import request

CASES = json.loads((Path(__file__).parent / "data" / "conformance_clients.json").read_text())


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
async def test_conformance(case: dict[str, Any], backend_url: str, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(backend=backend_url, groups=dict(case["slots"]))
    server = await aiohttp_server(create_app(settings))
    for n, step in enumerate(case["steps"]):
        req, expect = step["request"], step["expect"]
        resp = await request(
            server.host,
            server.port,
            req["method"],
            req["path"],
            req["headers"],
            req["body"].encode(),
        )
        where = f"step {n}: {req['method']} {req['path']}"
        assert resp.status == expect["status"], f"{where}: {resp.status} {resp.body!r}"
        if resp.status != 200:
            assert resp.headers["content-type"].startswith("application/json"), where
            doc = resp.json()
            assert isinstance(doc, dict), where
            assert isinstance(doc.get("kind"), str) and doc["kind"], where
            assert isinstance(doc.get("value"), str) and doc["value"], where
            if "kind" in expect:
                assert doc["kind"] == expect["kind"], where
