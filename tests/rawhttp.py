"""Send exactly the bytes a real client sends: no header added, none reordered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    *,
    host_header: str | None = None,
) -> RawResponse:
    """One HTTP/1.1 request on a fresh connection, with only Host and Content-Length added.

    ``host_header`` replaces the ``Host`` value (default ``host:port``).
    """
    shown = f"{host}:{port}" if host_header is None else host_header
    lines = [f"{method} {path} HTTP/1.1", f"Host: {shown}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return await exchange(host, port, ["\r\n".join(lines).encode("latin-1") + body])


async def exchange(
    host: str, port: int, parts: Sequence[bytes], pause: float = 0.0, timeout: float = 10.0
) -> RawResponse:
    """Send ``parts`` on a fresh connection, each in its own write (``pause`` seconds apart,
    so each leaves as its own TCP segment), then read the first answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        raw = await asyncio.wait_for(_read_response(reader), timeout)
    finally:
        writer.close()
    return parse(raw)


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """Bytes up to the end of the first response: its Content-Length, else the server's
    close (a server may keep reading a refused body for a while before it closes)."""
    raw = b""
    while chunk := await reader.read(65536):
        raw += chunk
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            continue
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length" and len(rest) >= int(value):
                return raw
    return raw


def parse(raw: bytes) -> RawResponse:
    """The first HTTP response in ``raw``."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        rest = _dechunk(rest)
    elif "content-length" in parsed:
        rest = rest[: int(parsed["content-length"])]
    return RawResponse(int(status_line.split()[1]), parsed, rest)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out
