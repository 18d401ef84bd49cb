"""Every FleetLock answer byte for byte as lockd wrote it before the refusal path was made
cheaper (issue #15, stop 11): status line, header names, values and order, body. Only the
values of Date and Server (the versions of Python and aiohttp) are masked. The expected
answers, tests/data/wire-answers.json, were written by ``python -m tests.test_wire
/work/main`` at the commit the branch started from; run it against this tree to see a
difference."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from bench.procs import Lockd

ANSWERS = Path(__file__).parent / "data" / "wire-answers.json"
HEADERS = "fleet-lock-protocol: true\r\naccept: */*\r\n"


def body(id_: str, group: str) -> str:
    return json.dumps({"client_params": {"id": id_, "group": group}})


def req(method: str, path: str, text: str = "", headers: str = HEADERS) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: lockd\r\n{headers}"
            f"Content-Length: {len(text.encode())}\r\n\r\n{text}").encode()


#: (name, raw request), sent in this order, each on a connection of its own.
CASES = [
    ("grant", req("POST", "/v1/pre-reboot", body("holder", "g"))),
    ("relock", req("POST", "/v1/pre-reboot", body("holder", "g"))),
    ("refusal full", req("POST", "/v1/pre-reboot", body("waiter", "g"))),
    ("refusal full, doubled slash", req("POST", "//v1/pre-reboot", body("waiter", "g"))),
    ("refusal full, percent-encoded path", req("POST", "/v1/pre%2Dreboot", body("w", "g"))),
    ("steady-state of a non-holder", req("POST", "/v1/steady-state", body("waiter", "g"))),
    ("no protocol header", req("POST", "/v1/pre-reboot", body("w", "g"), headers="")),
    ("protocol header false",
     req("POST", "/v1/pre-reboot", body("w", "g"), headers="fleet-lock-protocol: no\r\n")),
    ("not JSON", req("POST", "/v1/pre-reboot", "{nope")),
    ("no client_params", req("POST", "/v1/pre-reboot", "{}")),
    ("bad group", req("POST", "/v1/pre-reboot", body("w", "a b"))),
    ("empty id", req("POST", "/v1/pre-reboot", body("", "g"))),
    ("GET a FleetLock path", req("GET", "/v1/pre-reboot")),
    ("HEAD a FleetLock path", req("HEAD", "/v1/steady-state")),
    ("POST /healthz", req("POST", "/healthz", body("w", "g"))),
    ("GET /healthz", req("GET", "/healthz")),
    ("trailing slash", req("POST", "/v1/pre-reboot/", body("w", "g"))),
    ("unknown path", req("POST", "/nope", body("w", "g"))),
    ("tenant prefix, not public", req("POST", "/t/x/v1/pre-reboot", body("w", "g"))),
    ("body too large", req("POST", "/v1/pre-reboot", "x" * 70000)),
    ("release", req("POST", "/v1/steady-state", body("holder", "g"))),
]


async def answer(host: str, port: int, raw: bytes) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = re.search(rb"\r\nContent-Length: (\d+)", head, re.IGNORECASE)
        has_body = length is not None and not raw.startswith(b"HEAD ")
        rest = await asyncio.wait_for(reader.readexactly(int(length[1])), 10) if has_body \
            else b""
    finally:
        writer.close()
    text = (head + rest).decode("latin-1")
    # Masked: the time, and the Python and aiohttp versions the Server header names.
    return re.sub(r"\r\n(Date|Server): [^\r]*", r"\r\n\1: -", text)


def answers(tree: Path | None) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        server = Lockd(Path(tmp), "--backend", "memory://", "--default-slots", "1",
                       tree=tree).start()
        try:
            url = urlsplit(server.url)
            assert url.hostname and url.port
            return {name: asyncio.run(answer(url.hostname, url.port, raw))
                    for name, raw in CASES}
        finally:
            server.stop()


def test_every_answer_is_byte_identical() -> None:
    expected = json.loads(ANSWERS.read_text())
    got = answers(None)
    assert got["refusal full"].startswith("HTTP/1.1 423 Locked\r\n")  # not vacuous
    assert list(got) == list(expected)
    for name in expected:
        assert got[name] == expected[name], name


if __name__ == "__main__":
    print(json.dumps(answers(Path(sys.argv[1])), indent=1))
