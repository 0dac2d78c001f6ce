"""The sidecar's connections: a response's writes in one step of the event loop go out as one
write (``inference/transport.py``), and the direct routes reach their gate ahead of FastAPI
(``inference/http.DirectFirst``)."""

from __future__ import annotations

import asyncio

import pytest

from inference.http import DirectFirst
from inference.transport import CoalescingTransport, HTTPProtocol


class RecordingTransport(asyncio.Transport):
    """A transport that records each write it is given, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5432)}.get(name, default)


def test_writes_in_one_step_of_the_loop_go_out_as_one_write_when_it_ends() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], int]:
        inner = RecordingTransport()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        transport.write(memoryview(b"body"))
        transport.write(b"")  # nothing to send is not a write
        held = transport.get_write_buffer_size()
        during = list(inner.writes)
        await asyncio.sleep(0)  # the step ends
        transport.writelines([b"next", b" response"])
        await asyncio.sleep(0)
        return during, inner.writes, held

    during, writes, held = asyncio.run(scenario())
    assert during == []  # nothing leaves before the step ends
    assert held == len(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody")
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody", b"next response"]


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def scenario() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed, aborted = RecordingTransport(), RecordingTransport()
        first = CoalescingTransport(closed, loop)
        first.write(b"last words")
        first.close()
        second = CoalescingTransport(aborted, loop)
        second.write(b"never sent")
        second.abort()
        second.write(b"after the end")  # held, then dropped: the connection is closing
        await asyncio.sleep(0)
        return closed, aborted

    closed, aborted = asyncio.run(scenario())
    assert closed.writes == [b"last words"] and closed.closed
    assert aborted.writes == [] and aborted.aborted


def test_the_wrapped_transport_answers_everything_else() -> None:
    async def scenario() -> CoalescingTransport:
        return CoalescingTransport(RecordingTransport(), asyncio.get_running_loop())

    transport = asyncio.run(scenario())
    assert transport.get_extra_info("peername") == ("127.0.0.1", 5432)
    assert not transport.is_closing()


def test_a_real_uvicorn_server_answers_with_one_write_per_response(tmp_path) -> None:
    """uvicorn with ``HTTPProtocol`` on a real socket: the transport under the coalescing one
    sees the head and body of each response as one write, and the client reads the answer."""
    import uvicorn

    writes: list[bytes] = []

    class Recorded(HTTPProtocol):
        def connection_made(self, transport):
            write = transport.write

            def recorded(data) -> None:
                writes.append(bytes(data))
                write(data)

            transport.write = recorded  # the real transport, seen from under the coalescing one
            super().connection_made(transport)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
        )
        await send({"type": "http.response.body", "body": b"hello"})

    path = tmp_path / "s.sock"
    config = uvicorn.Config(app, uds=str(path), http=Recorded, lifespan="off", log_level="error")
    server = uvicorn.Server(config)

    async def scenario() -> bytes:
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_unix_connection(str(path))
        answers = []
        for _ in range(2):  # two requests on one connection
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            answers.append(head + await reader.readexactly(len(b"hello")))
        writer.close()
        server.should_exit = True
        await serving
        return b"".join(answers)

    answered = asyncio.run(scenario())
    assert answered.count(b"hello") == 2
    assert len(writes) == 2  # one write per response
    assert all(w.startswith(b"HTTP/1.1 200 OK") and w.endswith(b"hello") for w in writes)


@pytest.mark.parametrize(
    ("scope", "reaches"),
    [
        ({"type": "http", "method": "POST", "path": "/internal/embed"}, "gate"),
        ({"type": "http", "method": "GET", "path": "/internal/embed"}, "app"),
        ({"type": "http", "method": "GET", "path": "/health"}, "app"),
        ({"type": "lifespan"}, "app"),
    ],
)
def test_only_the_gates_direct_routes_skip_the_app(scope: dict, reaches: str) -> None:
    reached: list[str] = []

    async def app(scope, receive, send) -> None:
        reached.append("app")

    class FakeGate:
        direct = {("POST", "/internal/embed"): object()}

        async def __call__(self, scope, receive, send) -> None:
            reached.append("gate")

    asyncio.run(DirectFirst(app, FakeGate())(scope, None, None))  # type: ignore[arg-type]
    assert reached == [reaches]
