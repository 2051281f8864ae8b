"""The bare-bones baseline for ``bench_locust.py``: the least a Locust TCP user can do per echo.

One gevent socket per user, ``sendall`` + one ``recv`` per request, no reply check, no histogram, one ``request``
event. The issue's reference figure (about 38,000 requests/s from one process) was measured with a user like this;
the benchmark runs it next to ``ChatUser`` so the two are compared on the same machine at the same moment.
"""

from __future__ import annotations

import socket
import time

from locust import User, task
from locust.exception import StopUser


class BareEchoUser(User):
    """Connect, skip the greeting, send a timeout line, then echo 32-byte messages (plus newline) unchecked."""

    def wait_time(self) -> float:
        return 0.0

    def on_start(self) -> None:
        host, _, port = (self.host or "").removeprefix("tcp://").rpartition(":")
        try:
            self.sock = socket.create_connection((host, int(port)))
        except OSError:
            raise StopUser() from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.recv(65536)  # the greeting
        self.sock.sendall(b"60\n")
        self.line = b"m" * 32 + b"\n"  # a 32-byte message plus its newline, as ChatUser sends by default
        self.fire = self.environment.events.request.fire

    @task
    def echo(self) -> None:
        started = time.perf_counter()
        self.sock.sendall(self.line)
        data = self.sock.recv(65536)
        self.fire(
            request_type="tcp",
            name="echo",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=len(data),
            exception=None,
            context={},
        )

    def on_stop(self) -> None:
        self.sock.close()
