"""Every server model (gevent, thread, process, iterative) passes the same protocol conversation, end to end.

Each model runs as ``python -m geventchat --model M --port 0`` in a subprocess; the tests talk to it through
:class:`geventchat.ChatClient` with fractional timeouts.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator

import pytest

from geventchat import ChatClient, ClosedByServer, ConnectTimeout, Framing, ReplyTimeout
from geventchat.config import DEFAULT_GREETING, DEFAULT_PREFIX
from geventchat.models import MODELS
from geventchat.protocol import ClientConversation, ErrorNotice
from geventchat.testing import ServerProcess

HOST = "127.0.0.1"
# Short waits so the whole module runs in seconds; generous deadlines so a loaded machine does not fail it.
COMMON = ["--port", "0", "--min-timeout", "0.1", "--default-timeout", "5", "--max-line", "100", "--linger", "0.5"]
COMMON += ["--grace", "2", "--stats-interval", "0", "--handshake-timeout", "0.6"]


def start(model: str, *extra: str) -> ServerProcess:
    return ServerProcess("--model", model, *COMMON, *extra)


def connect(port: int, idle_timeout: float | None = 5.0, **kwargs: object) -> ChatClient:
    return ChatClient.connect(HOST, port, idle_timeout=idle_timeout, connect_timeout=5, reply_timeout=5, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def served(model: str) -> Iterator[ServerProcess]:
    """One server per model for the conversation cases (each test closes its clients: iterative serves one)."""
    with start(model) as server:
        yield server


@pytest.fixture
def port(served: ServerProcess) -> int:
    return served.port


def test_greeting(port: int) -> None:
    with connect(port, idle_timeout=None) as client:
        assert client.greeting == DEFAULT_GREETING


def test_negotiated_timeout_ends_an_idle_connection(port: int) -> None:
    with connect(port, idle_timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(ClosedByServer) as closed:
            client.receive(timeout=5)
        assert closed.value.reason == "idle timeout (0.3s)"
        assert time.monotonic() - started >= 0.29


def test_timeout_below_the_minimum_is_raised_to_it(port: int) -> None:
    with connect(port, idle_timeout=0.01) as client, pytest.raises(ClosedByServer) as closed:
        client.receive(timeout=5)
    assert closed.value.reason == "idle timeout (0.1s)"


def test_no_timeout_line_ends_with_the_handshake_timeout(port: int) -> None:
    with connect(port, idle_timeout=None) as client:
        started = time.monotonic()
        with pytest.raises(ClosedByServer) as closed:
            client.receive(timeout=5)
        assert closed.value.reason == "handshake timeout"
        assert time.monotonic() - started >= 0.59


def test_the_timeout_line_ends_the_handshake_timer(port: int) -> None:
    with connect(port, idle_timeout=None) as client:
        client.request_timeout(0.9)  # longer than the 0.6 s handshake timeout, which stops applying
        started = time.monotonic()
        with pytest.raises(ClosedByServer) as closed:
            client.receive(timeout=5)
        assert closed.value.reason == "idle timeout (0.9s)"
        assert time.monotonic() - started >= 0.89


def test_invalid_timeout_gets_an_error_and_the_default(port: int) -> None:
    with connect(port, idle_timeout=None) as client:
        client.send("soon")
        notice = client.receive()
        assert isinstance(notice, ErrorNotice)
        assert "not a positive decimal number" in notice.reason
        assert notice.reason.endswith("using the default of 5s")
        assert client.request("still here").message == "still here"


def test_echo_including_empty_lines_crlf_and_utf8(port: int) -> None:
    with connect(port) as client:
        assert client.request("hello").message == "hello"
        assert client.request("").message == ""
        assert client.request("你好").message == "你好"
        client.sock.sendall(b"crlf\r\n")
        assert client.expect_reply().text.endswith(":crlf")
        client.sock.sendall(b"one\ntwo\n")  # two messages in one segment: two replies
        assert client.expect_reply().message == "one"
        assert client.expect_reply().message == "two"


def test_quit_is_answered_then_closed(port: int) -> None:
    client = connect(port)
    reply = client.quit(wait_for_close=True)  # also waits for the server to close without a bye
    assert reply.message == ":q"


def test_line_too_long_says_bye(port: int) -> None:
    with connect(port) as client:
        client.send("x" * 101)
        with pytest.raises(ClosedByServer) as closed:
            client.receive()
        assert closed.value.reason == "line too long (limit 100 bytes)"


def test_invalid_utf8_is_an_error_not_the_end(port: int) -> None:
    with connect(port) as client:
        client.send(b"\xff\xfe")
        notice = client.receive()
        assert notice == ErrorNotice("message is not valid UTF-8")
        assert client.request("ok").message == "ok"


def test_unframed_client_is_detected(port: int) -> None:
    # The original tutorial's client: timeout and message in one chunk, no newline anywhere.
    with connect(port, idle_timeout=None, framing=Framing.RAW) as client:
        client.send(b"30hi")
        assert client.expect_reply().message == "hi"
        client.send(b"again")
        assert client.expect_reply().message == "again"


def test_unframed_client_that_half_closes_at_once_is_answered(port: int) -> None:
    """``printf 30hi | socat - TCP:...``: the chunk and the half-close both arrive inside the framing window."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"30hi")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        for _ in range(100):  # bounded: the whole answer is two short writes
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError(f"no end of input after {received!r}")
    greeting = (DEFAULT_GREETING + "\n").encode()
    assert received.startswith(greeting), received  # the server answered at all
    assert received == greeting + (DEFAULT_PREFIX + "hi").encode()  # the raw reply (no newline), then EOF


def test_trickling_bytes_does_not_extend_the_idle_timeout(port: int) -> None:
    with connect(port, idle_timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(ClosedByServer) as closed:
            for _ in range(100):  # up to 5 s of one byte per 50 ms, never a whole line
                client.sock.sendall(b"z")  # no newline: never a complete message
                try:
                    client.receive(timeout=0.05)
                except ReplyTimeout:
                    continue
        assert closed.value.reason == "idle timeout (0.3s)"
        assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("model", [m for m in MODELS if m != "iterative"])  # iterative: the next test
def test_server_full_and_freed(model: str) -> None:
    with start(model, "--max-connections", "2") as server:
        first, second = connect(server.port), connect(server.port)
        with pytest.raises(ClosedByServer) as closed:
            connect(server.port)
        assert closed.value.reason == "server full"
        assert second.request("still served").message == "still served"
        first.quit()
        # The server notices the departure asynchronously: retry, bounded, until the freed place is taken.
        deadline = time.monotonic() + 5
        while True:
            try:
                third = connect(server.port)
                break
            except ClosedByServer:
                assert time.monotonic() < deadline, "a place never freed up"
        assert third.request("in").message == "in"
        third.close()
        second.close()


def test_iterative_serves_one_at_a_time() -> None:
    with start("iterative") as server:
        first = connect(server.port)
        sock = ChatClient.open_socket(HOST, server.port)  # the handshake completes: the backlog holds it
        waiting = ChatClient(sock, ClientConversation(), reply_timeout=5)
        with pytest.raises(ConnectTimeout):
            waiting.read_greeting(timeout=0.3)
        first.quit()
        assert waiting.read_greeting(timeout=5) == DEFAULT_GREETING
        waiting.request_timeout(5)
        assert waiting.request("my turn").message == "my turn"
        waiting.close()


def test_sigterm_says_bye_to_every_client_and_exits_0(model: str) -> None:
    with start(model) as server:
        clients = [connect(server.port) for _ in range(1 if model == "iterative" else 3)]
        for index, client in enumerate(clients):
            assert client.request(f"before {index}").message == f"before {index}"
        server.send_signal(signal.SIGTERM)
        for client in clients:
            with pytest.raises(ClosedByServer) as closed:
                client.receive(timeout=5)
            assert closed.value.reason == "server shutting down"
            client.close()
        assert server.wait(10) == 0
        assert any("SIGTERM" in line for line in server.stderr)
