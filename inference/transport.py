"""The sidecar's HTTP connections: each response leaves in one write.

uvicorn writes a response's head when the application starts it and its body when the
application sends it: two writes, so a caller waiting for the answer (the SQL module, any
client) is woken twice, and on a machine with few cores the second write waits until the
woken caller has looked at the head and gone back to sleep. ``HTTPProtocol`` is uvicorn's own
protocol (httptools where installed) with its transport wrapped in ``CoalescingTransport``,
which holds what is written during one step of the event loop and sends it as one write when
the step ends: the head and body of a response come out together. With ``http.DirectFirst``
(the embedding routes ahead of FastAPI's middleware), ``bench/sql.py``'s path beyond the model
fell from 1.24 ms to 0.75-0.89 ms on a 2-core VM; each alone gave 0.89 and 0.92.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class CoalescingTransport:
    """A transport whose writes in one step of ``loop`` go out as one write at its end.

    Everything else is the wrapped transport's. ``close`` and ``write_eof`` send what is held
    first; ``abort`` drops it, as the wrapped transport drops its own buffer.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is held now, in one write (nothing once the connection is closing)."""
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol, writing each response in one write (``CoalescingTransport``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))
