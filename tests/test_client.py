"""The client library and the command-line client, end to end."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import gevent
import gevent.subprocess
import pytest
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket

from geventchat.client import ChatClient, ConnectionRefused, ConnectTimeout
from geventchat.config import Framing

from .conftest import ServerProcess

PREFIX = "我收到了你的信息:"
TUTORIAL_GREETING = "你好,我是服务器~"


@pytest.fixture
def tutorial_server() -> Iterator[tuple[str, int]]:
    """The original tutorial's unframed server: greeting without newline, int(recv()) timeout, chunk = message."""

    def handle(sock: GeventSocket, _address: object) -> None:
        sock.sendall(TUTORIAL_GREETING.encode())
        timeout = float(sock.recv(1024))
        sock.settimeout(timeout)
        while True:
            data = sock.recv(1024)
            if not data:
                return
            sock.sendall(PREFIX.encode() + data)
            if data == b":q":
                return

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    yield server.address
    server.stop()


def run_cli(*args: str, stdin: str = "", timeout: float = 20) -> gevent.subprocess.CompletedProcess:
    """The CLI in a subprocess, waited on cooperatively so in-process gevent servers keep serving."""
    return gevent.subprocess.run(
        [sys.executable, "-m", "geventchat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_raw_client_library_talks_to_the_tutorial_server(tutorial_server: tuple[str, int]) -> None:
    host, port = tutorial_server
    with ChatClient.connect(host, port, idle_timeout=30, framing=Framing.RAW) as client:
        assert client.greeting == TUTORIAL_GREETING
        assert client.request("hi").message == "hi"
        assert client.quit().text == PREFIX + ":q"


def test_raw_cli_client_against_the_tutorial_server(tutorial_server: tuple[str, int]) -> None:
    host, port = tutorial_server
    result = run_cli("client", "--host", host, "--port", str(port), "--framing", "raw", stdin="one\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [TUTORIAL_GREETING, PREFIX + "one", PREFIX + "two", PREFIX + ":q"]


def test_piped_client_end_to_end(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process()
    result = run_cli("client", "--port", str(server.port), "--timeout", "5", stdin="hello\n\nwörld\r\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "你好,我是geventchat~",
        PREFIX + "hello",
        PREFIX,
        PREFIX + "wörld",
        PREFIX + ":q",
    ]
    assert result.stderr == ""


def test_piped_client_stops_at_an_explicit_quit(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process()
    result = run_cli("client", "--port", str(server.port), stdin="a\n:q\nnever sent\n")
    assert result.returncode == 0
    assert result.stdout.splitlines()[1:] == [PREFIX + "a", PREFIX + ":q"]


def test_client_reports_a_bye_with_one_line_and_exit_1(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process("--max-line", "5")
    result = run_cli("client", "--port", str(server.port), stdin="much too long\n")
    assert result.returncode == 1
    assert result.stderr.strip() == "geventchat client: server closed the connection: line too long (limit 5 bytes)"
    assert "Traceback" not in result.stderr


def test_client_reports_refused_connection(unused_port: int) -> None:
    result = run_cli("client", "--port", str(unused_port), stdin="x\n")
    assert result.returncode == 1
    assert result.stderr.strip() == f"geventchat client: connection refused by 127.0.0.1:{unused_port}"


def test_client_reports_server_full(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process("--max-connections", "1")
    with ChatClient.connect(server.host, server.port, idle_timeout=10):
        result = run_cli("client", "--port", str(server.port), stdin="x\n")
    assert result.returncode == 1
    assert "server full" in result.stderr and "Traceback" not in result.stderr


def test_connect_errors_are_classified(unused_port: int) -> None:
    with pytest.raises(ConnectionRefused) as refused:
        ChatClient.connect("127.0.0.1", unused_port)
    assert refused.value.cause == "connection refused"
    # A listener that never greets: the handshake completes in the kernel, the greeting never comes.
    silent = GeventSocket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    with pytest.raises(ConnectTimeout, match="no greeting"):
        ChatClient.connect("127.0.0.1", silent.getsockname()[1], connect_timeout=0.2)
    silent.close()


@pytest.fixture
def unused_port() -> int:
    sock = GeventSocket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return port
