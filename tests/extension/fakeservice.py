"""Small local HTTP servers that misbehave (or record), standing in for the sidecar.

The module must cope with a service that never answers, answers nonsense, or answers
malformed embeddings or scores; and its batching is easiest to see on a server that records each
request. Each server runs in a thread of the test process on a free loopback port.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from inference import protocol
from tests.fixtures.sidecar import free_port


def _read_request(sock: socket.socket) -> tuple[str, bytes]:
    """Read one HTTP/1.1 request (request line + headers + Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return "", b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return lines[0], body


def _response(status: str, content_type: str, body: bytes, keep_alive: bool = False) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {connection}\r\n\r\n"
    ).encode() + body


class FakeService:
    """A loopback server whose ``behaviour`` decides how each connection is answered.

    Behaviours: ``stall`` (read the request, never answer), ``not_http`` (answer bytes that
    are not HTTP), ``short_binary`` (200 with a truncated embedding body), ``error_no_json``
    (500 with a plain-text body), ``record`` (answer the binary route with 2-dimensional
    vectors ``[len(text), position in request]``, record each request's texts, and keep the
    connection open between requests), ``rerank`` (answer the rerank route as the sidecar
    does, with ``score(query, document)`` for each document, ``len(document)`` unless set;
    record each request's texts and target, and keep the connection open),
    ``rerank_wrong_count`` (200 with one score more than there are documents), ``error`` (the
    sidecar's JSON error body: ``error=(status, code, message)``).

    ``requests`` holds each recorded request's texts, ``targets`` its path and query string.
    """

    def __init__(
        self,
        behaviour: str,
        unix_socket: str | None = None,
        error: tuple[int, str, str] | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.error = error
        self.requests: list[list[str]] = []
        self.targets: list[str] = []
        self.score: Callable[[str, str], float] = lambda query, document: float(len(document))
        self.connections = 0
        self._release = threading.Event()
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                fake.connections += 1
                fake.handle(self.request)

        self.server: socketserver.ThreadingTCPServer | socketserver.ThreadingUnixStreamServer
        if unix_socket:
            self.server = socketserver.ThreadingUnixStreamServer(unix_socket, Handler)
            os.chmod(unix_socket, 0o777)  # the server's system account connects to it
            self.url = f"unix:{unix_socket}"
        else:
            self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
            self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.server.daemon_threads = True
        # a short poll interval: shutdown() waits for the serving loop to notice
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def handle(self, sock: socket.socket) -> None:
        request_line, body = _read_request(sock)
        if not request_line:
            return
        if self.behaviour == "stall":
            self._release.wait(60)
        elif self.behaviour == "not_http":
            sock.sendall(b"nonsense, not a protocol anyone speaks\r\n\r\n")
        elif self.behaviour == "short_binary":
            sock.sendall(_response("200 OK", protocol.CONTENT_TYPE, b"\x01\x00\x00"))
        elif self.behaviour == "error_no_json":
            sock.sendall(_response("500 Internal Server Error", "text/plain", b"oops"))
        elif self.behaviour == "record":
            # keeps the connection open for the next request, as the sidecar does
            while request_line:
                texts = protocol.decode_request(body)
                self.requests.append(texts)
                payload = struct.pack("<II", len(texts), 2) + b"".join(
                    struct.pack("<ff", len(text), position) for position, text in enumerate(texts)
                )
                sock.sendall(_response("200 OK", protocol.CONTENT_TYPE, payload, keep_alive=True))
                request_line, body = _read_request(sock)
        elif self.behaviour == "rerank":
            while request_line:
                texts = protocol.decode_request(body)
                self.requests.append(texts)
                self.targets.append(request_line.split(" ")[1])
                query, *documents = texts
                scores = np.array([self.score(query, d) for d in documents], dtype=np.float32)
                payload = protocol.encode_scores(scores)
                sock.sendall(_response("200 OK", protocol.CONTENT_TYPE, payload, keep_alive=True))
                request_line, body = _read_request(sock)
        elif self.behaviour == "rerank_wrong_count":
            texts = protocol.decode_request(body)
            payload = protocol.encode_scores(np.zeros(len(texts), dtype=np.float32))
            sock.sendall(_response("200 OK", protocol.CONTENT_TYPE, payload))
        elif self.behaviour == "error":
            assert self.error is not None, "the error behaviour needs error=(status, code, message)"
            status, code, message = self.error
            payload = json.dumps(
                {
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": code,
                    }
                }
            ).encode()
            sock.sendall(_response(f"{status} Error", "application/json", payload))
        else:
            raise ValueError(f"unknown behaviour {self.behaviour!r}")

    def start(self) -> FakeService:
        self._thread.start()
        return self

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def fake_service(
    behaviour: str, unix_socket: str | None = None, error: tuple[int, str, str] | None = None
) -> Iterator[FakeService]:
    service = FakeService(behaviour, unix_socket, error).start()
    try:
        yield service
    finally:
        service.close()


def closed_port_url() -> str:
    """A loopback URL on which nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
