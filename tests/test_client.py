"""The client library and the command-line client, end to end."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import gevent
import gevent.event
import gevent.subprocess
import pytest
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket

from geventchat._net import unread_bytes
from geventchat.client import ChatClient, ClosedByServer, ConnectionRefused, ConnectTimeout, ReplyTimeout
from geventchat.config import Framing
from geventchat.protocol import ErrorNotice, Reply
from geventchat.server import ChatServer
from geventchat.testing import ServerProcess, wait_until

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


class HoldingServer:
    """A server that answers ``:q`` and never closes: what our client sees of the tutorial's process-per-client
    server, whose child closes after ``:q`` while the parent keeps its copy of the accepted socket, so no end of
    input ever arrives. It greets (no newline in raw framing), takes the timeout, answers each message with the
    prefix, answers ``:q`` (followed by ``after_quit`` in the same write; not at all if not ``answer_quit``), then
    only waits for the client to close.
    """

    def __init__(self, framing: Framing, after_quit: bytes = b"", *, answer_quit: bool = True) -> None:
        self.framing = framing
        self.after_quit = after_quit
        self.answer_quit = answer_quit
        #: Set when the client closed its side after the reply to ':q'.
        self.client_closed = gevent.event.Event()
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.address: tuple[str, int] = self.server.address

    def _handle(self, sock: GeventSocket, _address: object) -> None:
        line = self.framing is Framing.LINE
        end = b"\n" if line else b""
        reader = sock.makefile("rb")  # line framing reads through it, and only through it, until ':q'
        sock.sendall(TUTORIAL_GREETING.encode() + end)
        sock.settimeout(float(reader.readline(1024) if line else sock.recv(1024)))
        while True:
            received = reader.readline(1024) if line else sock.recv(1024)
            if not received:
                return
            data = received.rstrip(b"\n")
            if data == b":q":
                if self.answer_quit:
                    sock.sendall(PREFIX.encode() + data + end + self.after_quit)
                break
            sock.sendall(PREFIX.encode() + data + end)
        # Never close: only notice the client's close (bounded by the negotiated timeout and by stop()).
        if sock.recv(1024) == b"":
            self.client_closed.set()


@pytest.fixture
def holding_server() -> Iterator[Callable[..., HoldingServer]]:
    started: list[HoldingServer] = []

    def start(framing: Framing, after_quit: bytes = b"") -> HoldingServer:
        started.append(HoldingServer(framing, after_quit))
        return started[-1]

    yield start
    for stub in started:
        stub.server.stop()


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


@pytest.mark.parametrize("framing", [Framing.RAW, Framing.LINE], ids=["raw", "line"])
def test_quit_returns_at_the_reply_without_waiting_for_a_close(
    holding_server: Callable[..., HoldingServer], framing: Framing
) -> None:
    stub = holding_server(framing)
    with ChatClient.connect(*stub.address, idle_timeout=30, framing=framing) as client:
        assert client.greeting == TUTORIAL_GREETING
        assert client.request("hi").message == "hi"
        # Waiting for the server's end of input would raise ReplyTimeout here: it never comes.
        assert client.quit().text == PREFIX + ":q"
    assert stub.client_closed.wait(5), "the client did not close after the reply to ':q'"


def test_quit_reports_a_bye_that_came_with_the_reply(holding_server: Callable[..., HoldingServer]) -> None:
    stub = holding_server(Framing.LINE, after_quit=b"bye: server shutting down\n")
    with ChatClient.connect(*stub.address, idle_timeout=30) as client:
        with pytest.raises(ClosedByServer) as closed:
            client.quit()
    assert closed.value.reason == "server shutting down"


def test_quit_can_wait_for_the_close(holding_server: Callable[..., HoldingServer]) -> None:
    # A reply timeout no loaded machine needs for a loopback echo, so the timeout below is the close's.
    stub = holding_server(Framing.LINE)
    with ChatClient.connect(*stub.address, idle_timeout=30, reply_timeout=2) as client:
        assert client.request("hi").message == "hi"
        with pytest.raises(ReplyTimeout):
            client.quit(wait_for_close=True)


@pytest.mark.parametrize("framing", [Framing.RAW, Framing.LINE], ids=["raw", "line"])
def test_cli_client_finishes_against_a_server_that_never_closes(
    holding_server: Callable[..., HoldingServer], framing: Framing
) -> None:
    stub = holding_server(framing)
    host, port = stub.address
    # The bound is under the 10 s reply timeout: a client waiting for the close would be killed, not pass.
    result = run_cli(
        "client", "--host", host, "--port", str(port), "--framing", framing.value, stdin="one\ntwo\n", timeout=8
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [TUTORIAL_GREETING, PREFIX + "one", PREFIX + "two", PREFIX + ":q"]
    assert result.stderr == ""
    assert stub.client_closed.wait(5), "the client did not close after the reply to ':q'"


def test_cli_client_shows_a_bye_that_came_with_the_quit_reply(holding_server: Callable[..., HoldingServer]) -> None:
    stub = holding_server(Framing.LINE, after_quit=b"bye: server shutting down\n")
    result = run_cli("client", "--port", str(stub.address[1]), stdin="one\n", timeout=8)
    assert result.returncode == 1
    # The reply to ':q' arrived before the bye: it is printed (nothing the server sent is dropped), then the bye.
    assert result.stdout.splitlines() == [TUTORIAL_GREETING, PREFIX + "one", PREFIX + ":q"]
    assert result.stderr.strip() == "geventchat client: server closed the connection: server shutting down"


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


def test_piped_client_keeps_echoes_in_step_when_chat_lines_arrive(start_server: Callable[..., ChatServer]) -> None:
    # ':join' and ':nick' get their echo and then an 'ok:' line. The piped client must print them all and still
    # end at the echo of ':q' (it used to take an 'ok:' line for that echo and exit 1).
    server = start_server()
    host, port = server.address
    with ChatClient.connect(host, port, idle_timeout=30) as other:
        other.send(":join lobby")
        other.expect_reply(":join lobby")
        result = run_cli(
            "client", "--host", host, "--port", str(port), stdin=":join lobby\nhello\n:nick ann\n", timeout=20
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    prefix = server.config.protocol.prefix
    assert lines[0] == server.config.protocol.greeting
    assert [line for line in lines if line.startswith(prefix)] == [
        prefix + ":join lobby",
        prefix + "hello",
        prefix + ":nick ann",
        prefix + ":q",
    ]
    assert "ok: joined #lobby (2 members)" in lines  # the situation happened: chat answers came in between
    assert lines.index("ok: joined #lobby (2 members)") == lines.index(prefix + ":join lobby") + 1
    assert lines[-1] == prefix + ":q"


def _chat(*texts: str) -> list[Reply]:
    """Chat lines as the client's events: a line without the prefix is its own message."""
    return [Reply(text, text) for text in texts]


def _joined(address: tuple[str, int], nick: str) -> ChatClient:
    client = ChatClient.connect(*address, idle_timeout=30)
    client.request(f":nick {nick}")
    assert client.receive() == Reply(f"ok: you are {nick}", f"ok: you are {nick}")
    client.request(":join r")
    event = client.receive()
    assert isinstance(event, Reply) and event.text.startswith("ok: joined #r")
    return client


def test_request_and_quit_pass_over_chat_lines_that_arrive_before_the_echo(
    start_server: Callable[..., ChatServer],
) -> None:
    server = start_server()
    listener = _joined(server.address, "ann")
    talker = _joined(server.address, "bob")
    with listener, talker:
        talker.request("first")
        wait_until(lambda: unread_bytes(listener.sock) > 0, what="the room line to reach ann's socket")
        assert listener.request("mine").message == "mine"  # the situation: two lines came before this echo
        assert list(listener.set_aside) == _chat("info: bob joined #r", "#r bob: first")
        listener.set_aside.clear()
        talker.request("second")
        wait_until(lambda: unread_bytes(listener.sock) > 0, what="the next room line")
        assert listener.quit(wait_for_close=True).text == PREFIX + ":q"
        assert list(listener.set_aside) == _chat("#r bob: second")


def test_quit_waiting_for_the_close_passes_over_chat_lines_to_the_bye(
    holding_server: Callable[..., HoldingServer],
) -> None:
    stub = holding_server(Framing.LINE, after_quit=b"info: ann left #r (quit)\n@ann: psst\nbye: server shutting down\n")
    with ChatClient.connect(*stub.address, idle_timeout=30) as client:
        with pytest.raises(ClosedByServer) as closed:
            client.quit(wait_for_close=True)
        assert list(client.set_aside) == _chat("info: ann left #r (quit)", "@ann: psst")
    assert closed.value.reason == "server shutting down"


def test_an_error_after_an_earlier_echo_is_set_aside_not_taken_for_the_reply(
    start_server: Callable[..., ChatServer],
) -> None:
    server = start_server()
    with ChatClient.connect(*server.address, idle_timeout=30) as client:
        client.send(":leave")  # its echo, then 'error: not in a room'
        client.send("next")
        assert client.expect_reply(":leave").message == ":leave"
        assert client.expect_reply("next").message == "next"
        assert list(client.set_aside) == [ErrorNotice("not in a room")]
