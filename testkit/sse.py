"""A Server-Sent Events reader for tests and benchmarks, parsing the stream as the HTML standard says
(fields, comments, multi-line data, blank line ends an event), over a real HTTP connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Stream:
    """What one reader saw: its events, the comments (keep-alives) and the last ``id`` (as a browser keeps it)."""

    events: list[SSEEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    last_id: str | None = None
    retry: int | None = None

    def of(self, kind: str) -> list[SSEEvent]:
        return [e for e in self.events if e.event == kind]


async def parse(lines: AsyncIterator[bytes], stream: Stream) -> AsyncIterator[SSEEvent | None]:
    """Events from the response's lines, None after a comment; fills ``stream`` as it goes."""
    current = SSEEvent()
    data: list[str] = []
    seen = False
    async for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if seen and data:
                current.data = "\n".join(data)
                if current.id is not None:
                    stream.last_id = current.id
                stream.events.append(current)
                yield current
            current, data, seen = SSEEvent(), [], False
            continue
        if line.startswith(":"):
            stream.comments.append(line[1:].strip())
            yield None
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        seen = True
        if name == "event":
            current.event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            current.id = value
        elif name == "retry" and value.isdigit():
            current.retry = stream.retry = int(value)


async def read_until(response: aiohttp.ClientResponse, stream: Stream, done: Any, timeout: float) -> Stream:
    """Read events into ``stream`` until ``done(stream)`` is true; TimeoutError after ``timeout`` s."""
    async def run() -> None:
        if done(stream):
            return
        async for _ in parse(response.content, stream):
            if done(stream):
                return

    await asyncio.wait_for(run(), timeout)
    return stream
