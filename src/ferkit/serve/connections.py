"""How ``ferkit serve`` holds its connections: a deadline for each request's head, JSON for malformed ones.

uvicorn's own HTTP protocol waits as long as a client likes for the request line and headers (a client
sending one header line a second stayed connected indefinitely), and counts silent connections toward
its concurrency limit (270 idle sockets made every new client, health checks included, get 503).
:class:`GuardedH11Protocol` closes a connection whose request head has not arrived within
``header_timeout`` seconds of its opening or of its last response, however it trickles in; the server
then needs no connection-count limit, since a connection without a request lives only that long.
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ferkit.serve.settings import CONFIG_ENV, ServeConfig

HEAD_LIMIT_BYTES = 64 * 1024  # request line and headers together; a browser sends a few KB


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head and JSON answers to malformed requests."""

    # uvicorn builds the protocol from its class, in each worker process: the deadline comes from the
    # settings that process was started with (set by run_server, or its environment for --workers > 1).
    header_timeout: float = json.loads(os.environ.get(CONFIG_ENV) or "{}").get(
        "header_timeout_s", ServeConfig.header_timeout_s)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE:  # answer only where no response has begun
            self._send_json(408, f"the request head took longer than {self.header_timeout:g} s")
        else:
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in: the app's own timeouts take over
            self._cancel_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()  # the next request's head gets the same deadline

    def send_400_response(self, msg: str) -> None:
        self._send_json(400, f"malformed HTTP request ({msg.rstrip('.')}); request heads may hold at most "
                             f"{HEAD_LIMIT_BYTES // 1024} KB")

    def _send_json(self, status: int, message: str) -> None:
        """Answer ``status`` with ferkit's JSON error body and close the connection."""
        body = json.dumps({"error": message}).encode()
        head = (f"HTTP/1.1 {status} {'Bad Request' if status == 400 else 'Request Timeout'}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode() + body)
        self.transport.close()


def raise_open_file_limit(wanted: int = 65536) -> int:
    """Raise this process's soft limit on open files toward ``wanted`` (within the hard limit); returns it.

    Each connection holds a file descriptor: idle ones cost the server nothing else now, so the limit
    is what would refuse new clients.
    """
    try:
        import resource
    except ImportError:  # not a Unix: nothing to raise
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
