"""The gevent server over loopback (port 0), one test per protocol rule, with fractional timeouts."""

from __future__ import annotations

import gc
import logging
import socket
import struct
import time
import weakref
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool
import pytest
from gevent.socket import create_connection
from gevent.socket import socket as GeventSocket

from geventchat._net import unread_bytes
from geventchat.client import ChatClient, ClosedByServer, ConnectionReset, ReplyTimeout
from geventchat.config import Framing, ServerConfig
from geventchat.protocol import ErrorNotice
from geventchat.server import ChatServer
from geventchat.server import connection as server_connection
from geventchat.testing import wait_until

PREFIX = "我收到了你的信息:"
StartServer = Callable[..., ChatServer]


def connect(server: ChatServer, **kwargs: object) -> ChatClient:
    host, port = server.address
    return ChatClient.connect(host, port, **kwargs)  # type: ignore[arg-type]


def expect_bye(client: ChatClient, timeout: float = 5.0) -> str | None:
    with pytest.raises(ClosedByServer) as closed:
        client.receive(timeout=timeout)
    return closed.value.reason


# ------------------------------------------------------------------------------------------ rules 1-4


def test_rule1_greeting(start_server: StartServer) -> None:
    server = start_server(greeting="hello there")
    with connect(server) as client:
        assert client.greeting == "hello there"


def test_rule3_echo_with_prefix_including_empty_and_unicode_lines(start_server: StartServer) -> None:
    server = start_server()
    with connect(server, idle_timeout=5) as client:
        for message in ["hello", "", "世界 ünïcode", "x" * 1000]:
            reply = client.request(message)
            assert reply.text == PREFIX + message and reply.message == message


def test_rule3_pipelined_messages_come_back_in_order(start_server: StartServer) -> None:
    server = start_server()
    with connect(server, idle_timeout=5) as client:
        client.sock.sendall(b"".join(b"m%d\n" % i for i in range(500)))
        assert [client.expect_reply().message for _ in range(500)] == [f"m{i}" for i in range(500)]


def test_rule4_quit_is_answered_then_the_server_closes(start_server: StartServer) -> None:
    server = start_server()
    client = connect(server, idle_timeout=5)
    assert client.quit().text == PREFIX + ":q"
    wait_until(lambda: server.stats.current == 0, what="the server to drop the connection")
    assert server.stats.closed.get("quit") == 1


# ------------------------------------------------------------------------------------- rule 2, rule 5


def test_rule2_timeout_is_negotiated(start_server: StartServer) -> None:
    server = start_server()
    with connect(server, idle_timeout=0.3) as client:
        started = time.monotonic()
        assert expect_bye(client) == "idle timeout (0.3s)"
        assert 0.25 <= time.monotonic() - started < 2.0


def test_rule2_timeout_is_clamped(start_server: StartServer) -> None:
    server = start_server(min_timeout=0.2, max_timeout=0.4)
    with connect(server, idle_timeout=0.01) as client:
        assert expect_bye(client) == "idle timeout (0.2s)"
    with connect(server, idle_timeout=50) as client:
        assert expect_bye(client) == "idle timeout (0.4s)"


@pytest.mark.parametrize("bad", ["abc", "0", "-5", "nan", "inf"])
def test_rule2_invalid_timeout_gets_error_and_default(start_server: StartServer, bad: str) -> None:
    server = start_server(default_timeout=0.3)
    with connect(server) as client:
        client.send(bad)
        event = client.receive()
        assert isinstance(event, ErrorNotice) and "using the default of 0.3s" in event.reason
        assert client.request("still here").message == "still here"
        assert expect_bye(client) == "idle timeout (0.3s)"


def test_rule2_default_applies_until_negotiated(start_server: StartServer) -> None:
    server = start_server(default_timeout=0.3)
    with connect(server) as client:  # never sends a timeout
        assert expect_bye(client) == "idle timeout (0.3s)"


#: Idle timeout of the rule-5 tests. Long enough that a loaded machine's stalls between two of our messages (sent
#: a few tens of milliseconds apart) stay far below it; every timing check is a lower bound the server cannot
#: undercut (it counts from reading a message, after we sent it) plus seconds of slack above.
IDLE = 1.0
#: Pause between two messages of a client kept active: a pace, not a race (the margin is IDLE minus this).
PACE = 0.05


def keep_active(exchange: Callable[[int], None], seconds: float) -> float:
    """Run ``exchange(i)`` (send a line, check its answer) every PACE seconds until ``seconds`` have passed; the
    last exchange begins after that. Returns when it began (before its line was sent)."""
    started = last_sent = time.monotonic()
    for i in range(10 * int(seconds / PACE)):  # bounded; the clock ends it
        last_sent = time.monotonic()
        exchange(i)
        if last_sent - started > seconds:
            break
        gevent.sleep(PACE)
    return last_sent


def test_rule5_messages_extend_the_idle_timeout(start_server: StartServer) -> None:
    server = start_server()
    with connect(server, idle_timeout=IDLE) as client:
        negotiated = time.monotonic()

        def echo(i: int) -> None:
            assert client.request(f"keepalive {i}").message == f"keepalive {i}"

        last_sent = keep_active(echo, 2 * IDLE)
        # The situation: the conversation outlived twice its idle timeout, every message answered.
        assert last_sent - negotiated > 2 * IDLE
        # What must hold: the timeout counts from the last message.
        assert expect_bye(client, timeout=IDLE + 5) == "idle timeout (1s)"
        assert IDLE <= time.monotonic() - last_sent < IDLE + 5


def test_rule5_trickling_bytes_do_not_extend_the_idle_timeout(start_server: StartServer) -> None:
    server = start_server()
    with connect(server, idle_timeout=IDLE) as client:
        last_sent = time.monotonic()
        client.request("last complete message")
        closed: ClosedByServer | None = None
        trickled = 0
        # A byte every PACE seconds, never a newline, for up to IDLE + 5 s: were bytes activity, the server would
        # not close before we stop.
        for _ in range(int((IDLE + 5) / PACE)):
            try:
                client.sock.sendall(b"x")
                trickled += 1
                client.receive(timeout=PACE)
            except ReplyTimeout:
                continue
            except ClosedByServer as exc:
                closed = exc
                break
        assert trickled >= 3, "the trickle never got going"
        assert closed is not None, "trickled bytes kept the connection open"
        assert closed.reason == "idle timeout (1s)"
        assert IDLE <= time.monotonic() - last_sent < IDLE + 3


def test_rule5_a_reader_that_never_reads_is_closed_at_the_idle_timeout(start_server: StartServer) -> None:
    server = start_server()
    sock = GeventSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(server.address)
    started = time.monotonic()
    sock.sendall(f"{IDLE:g}\n".encode())
    line = b"y" * 32768 + b"\n"
    lines = 2000  # 64 MB: far more than the buffers hold, sent in far less than IDLE if nothing held it up
    sent = [0]

    def send_without_reading() -> None:
        for _ in range(lines):
            try:
                sock.sendall(line)
            except OSError:  # the server closed us
                return
            sent[0] += 1

    # Keep sending without reading. The server's replies back up, its send blocks (so it stops reading ours), and
    # the idle timer, which covers sends, must end the connection.
    sender = gevent.spawn(send_without_reading)
    try:
        wait_until(lambda: server.stats.closed.get("idle timeout") == 1, timeout=IDLE + 10, what="the idle close")
        elapsed = time.monotonic() - started
        # The situation: the server stopped reading us (its replies were stuck), so our sending stalled.
        assert sent[0] < lines, "every line went through: the server's replies never backed up"
        assert elapsed >= IDLE
    finally:
        sender.kill()
        sock.close()


# ------------------------------------------------------------------------------------------ rules 6, 7


def test_rule6_line_too_long(start_server: StartServer) -> None:
    server = start_server(max_line=100)
    with connect(server, idle_timeout=5) as client:
        assert client.request("y" * 100).message == "y" * 100  # the limit itself is fine
        client.send("z" * 101)
        assert expect_bye(client) == "line too long (limit 100 bytes)"


def test_rule6_and_rule10_bye_survives_input_still_in_flight(start_server: StartServer) -> None:
    """A lingering close: the client keeps sending after the bye, and still reads the bye, not a reset."""
    server = start_server(max_line=1000)
    with connect(server, idle_timeout=5) as client:
        client.sock.sendall(b"q" * 300_000)  # far over the limit, much of it unread when the server closes
        assert expect_bye(client) == "line too long (limit 1000 bytes)"


def test_rule7_invalid_utf8_gets_error_and_conversation_goes_on(start_server: StartServer) -> None:
    server = start_server()
    with connect(server, idle_timeout=5) as client:
        client.sock.sendall(b"\xc3\x28 broken\n")
        event = client.receive()
        assert event == ErrorNotice("message is not valid UTF-8")
        assert client.request("fine").message == "fine"


# ------------------------------------------------------------------------------------------ rule 8


def test_rule8_server_full_then_served_again(start_server: StartServer) -> None:
    server = start_server(max_connections=2)
    first = connect(server, idle_timeout=5)
    second = connect(server, idle_timeout=5)
    with pytest.raises(ClosedByServer) as full:
        connect(server, idle_timeout=5)
    assert full.value.reason == "server full"
    assert first.request("unaffected").message == "unaffected"
    first.quit()
    wait_until(lambda: server.stats.current == 1, what="a slot to free")
    with connect(server, idle_timeout=5) as third:
        assert third.request("served").message == "served"
    second.close()
    assert server.stats.rejected_full == 1


# ------------------------------------------------------------------------------------------ rule 9


def test_rule9_graceful_shutdown_in_process(start_server: StartServer) -> None:
    server = start_server(grace=2)
    clients = [connect(server, idle_timeout=30) for _ in range(20)]
    for client in clients:
        client.request("before")
    stopper = gevent.spawn(server.shutdown)
    assert all(expect_bye(client) == "server shutting down" for client in clients)
    for client in clients:
        client.close()
    stopper.join(timeout=5)
    assert stopper.dead and server.stats.current == 0
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1).recv(1)


def test_rule9_grace_over_closes_the_rest(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    server = start_server(grace=0.2, linger=5)
    client = connect(server, idle_timeout=30)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="geventchat.server"):
        stopper = gevent.spawn(server.shutdown)
        # The client reads the bye but never closes: the server must not wait for it (or its linger) forever.
        assert expect_bye(client) == "server shutting down"
        stopper.join(timeout=5)
    assert stopper.dead and time.monotonic() - started < 3
    assert server.stats.current == 0
    assert any("grace period over; closing 1 remaining" in r.getMessage() for r in caplog.records)
    client.close()


def test_rule9_a_client_accepted_as_the_shutdown_begins_is_told_why(start_server: StartServer) -> None:
    # The acceptor can hand over a socket it accepted in the loop turn the shutdown began (a reload's old worker
    # does this under load): that client must read why it is not served, not a bare close.
    server = start_server(grace=1)
    with GeventSocket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = create_connection(listener.getsockname(), timeout=5)
        accepted, address = listener.accept()
    stopper = gevent.spawn(server.shutdown)
    stopper.join(timeout=5)
    assert stopper.dead and server.shutting_down  # the shutdown began (and, with no clients, ended) first
    server._handle(accepted, address)  # as the acceptor calls it
    accepted.close()
    with client:
        received = b""
        while not received.endswith(b"\n"):
            chunk = client.recv(100)
            assert chunk, received
            received += chunk
    assert received == b"bye: server shutting down\n"
    assert server.stats.closed.get("server shutting down") == 1


# ------------------------------------------------------------------------------ unframed (raw) clients


def test_unframed_client_is_auto_detected(start_server: StartServer) -> None:
    server = start_server()
    sock = create_connection(server.address, timeout=5)
    greeting = sock.recv(1024)
    assert greeting.decode().startswith("你好")
    sock.sendall(b"30hi")  # the tutorial client: timeout and first message in one chunk, no newline
    assert sock.recv(1024) == (PREFIX + "hi").encode()
    sock.sendall(b"hello")
    assert sock.recv(1024) == (PREFIX + "hello").encode()
    sock.sendall(b":q")
    assert sock.recv(1024) == (PREFIX + ":q").encode()
    assert sock.recv(1024) == b""
    sock.close()


def test_unframed_forced_line_framing_waits_for_the_newline(start_server: StartServer) -> None:
    server = start_server(framing=Framing.LINE)
    with connect(server) as client:
        client.sock.sendall(b"0.3")
        with pytest.raises(ReplyTimeout):  # no raw detection: nothing comes back
            client.receive(timeout=0.3)
        client.sock.sendall(b"\nok\n")
        assert client.expect_reply().message == "ok"


def test_unframed_forced_raw_framing(start_server: StartServer) -> None:
    server = start_server(framing=Framing.RAW)
    with connect(server, idle_timeout=5, framing=Framing.RAW) as client:
        assert client.greeting == "你好,我是geventchat~"
        assert client.request("a\nb").message == "a\nb"  # a chunk is a message, newline and all


# ------------------------------------------------------------------------------------------ robustness


def test_500_concurrent_clients_each_with_a_full_conversation(start_server: StartServer) -> None:
    server = start_server()
    host, port = server.address

    def conversation(i: int) -> bool:
        with ChatClient.connect(host, port, idle_timeout=10, reply_timeout=20, connect_timeout=20) as client:
            for j in range(3):
                assert client.request(f"client {i} message {j}").message == f"client {i} message {j}"
            assert client.quit().message == ":q"
        return True

    pool = gevent.pool.Pool(500)
    results = pool.map(conversation, range(500))
    assert results == [True] * 500
    wait_until(lambda: server.stats.current == 0, timeout=10, what="all connections to close")
    assert server.stats.total == 500 and server.stats.closed.get("quit") == 500
    assert server.stats.messages == 500 * 4


def test_reset_mid_line_does_not_disturb_the_server(start_server: StartServer) -> None:
    server = start_server()
    victim = connect(server, idle_timeout=5)
    bystander = connect(server, idle_timeout=5)
    victim.sock.sendall(b"half a li")
    victim.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    victim.close()  # RST
    wait_until(lambda: server.stats.current == 1, what="the reset connection to go")
    assert bystander.request("still fine").message == "still fine"
    with connect(server, idle_timeout=5) as fresh:
        assert fresh.request("new").message == "new"
    bystander.close()


def test_client_closing_before_the_greeting(start_server: StartServer) -> None:
    server = start_server()
    for _ in range(20):
        sock = socket.create_connection(server.address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    wait_until(lambda: server.stats.total == 20 and server.stats.current == 0, what="20 short connections")
    with connect(server, idle_timeout=5) as client:
        assert client.request("ok").message == "ok"


def test_an_internal_error_stays_in_its_connection(
    start_server: StartServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from geventchat.protocol import ServerConversation

    original = ServerConversation.receive_data

    def exploding(self: ServerConversation, data: bytes) -> list[object]:
        if b"boom" in data:
            raise RuntimeError("simulated bug")
        return original(self, data)  # type: ignore[return-value]

    monkeypatch.setattr(ServerConversation, "receive_data", exploding)
    server = start_server()
    bystander = connect(server, idle_timeout=5)
    with caplog.at_level(logging.ERROR, logger="geventchat.server"), connect(server, idle_timeout=5) as victim:
        victim.send("boom")
        with pytest.raises((ClosedByServer, ConnectionReset)):
            victim.receive()
    assert any("internal error" in r.getMessage() for r in caplog.records)
    assert bystander.request("unaffected").message == "unaffected"
    assert "simulated bug" not in capfd.readouterr().err  # never reached gevent's hub printer
    bystander.close()


def test_stats_line_is_logged(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="geventchat.server"):
        server = start_server(stats_interval=0.05)
        with connect(server, idle_timeout=5) as client:
            client.request("count me")
            wait_until(lambda: any("1 current" in r.getMessage() for r in caplog.records), what="a statistics line")
    line = next(r.getMessage() for r in caplog.records if "1 current" in r.getMessage())
    assert "messages/s" in line and "bytes/s in" in line


def test_debug_log_escapes_peer_text(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="geventchat.server"):
        server = start_server()
        with connect(server, idle_timeout=5) as client:
            client.request("evil \x1b[2J terminal")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "\\x1b[2J" in text and "\x1b" not in text
    assert "connected" in text


def test_a_polite_quit_closes_without_lingering(start_server: StartServer) -> None:
    """After ':q' with nothing unread, a plain close cannot reset anything: no lingering for the client's EOF."""
    server = start_server(linger=30)
    sock = create_connection(server.address, timeout=5)
    sock.sendall(b"5\n:q\n")
    received = b""
    while not received.endswith(b"\n") or received.count(b"\n") < 2:
        chunk = sock.recv(1024)
        assert chunk, received
        received += chunk
    assert received.endswith((PREFIX + ":q\n").encode())
    assert sock.recv(1024) == b""  # the server's FIN, while we keep our side open
    wait_until(lambda: server.stats.current == 0, timeout=3, what="the server to let go (linger is 30 s)")
    sock.close()


def test_a_quit_with_more_input_queued_behind_it_still_lingers(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads of 16 bytes: ':q' comes in a full chunk with input still queued in the kernel, so the server asks
    (FIONREAD), finds it, and closes lingering: the client reads the answer to ':q' and an EOF, not a reset."""
    asked: list[int] = []

    def counting_unread_bytes(sock: socket.socket) -> int:
        asked.append(unread_bytes(sock))
        return asked[-1]

    monkeypatch.setattr(server_connection, "unread_bytes", counting_unread_bytes)
    server = start_server(recv_size=16, linger=5)
    sock = create_connection(server.address, timeout=5)
    try:
        sock.sendall(b"5\n")
        greeting = sock.recv(1024)
        assert greeting  # the conversation is open
        sock.sendall(b":q\n" + b"x" * 13 + b"after the quit, unread\n" * 100)
        received = read_to_eof(sock)
    finally:
        sock.close()
    assert len(asked) == 1 and asked[0] > 0  # the situation: the kernel was asked, and input was queued
    assert (PREFIX + ":q\n").encode() in greeting + received  # answered, and no reset cut it off
    wait_until(lambda: server.stats.current == 0, timeout=10, what="the server to finish its lingering close")
    assert server.stats.closed.get("quit") == 1


def test_refused_lines_are_activity_for_the_idle_timeout(start_server: StartServer) -> None:
    """A line refused with 'error:' is still a complete message: the idle timeout counts from it."""
    server = start_server()
    with connect(server, idle_timeout=IDLE) as client:
        negotiated = time.monotonic()

        def refused(_i: int) -> None:
            client.sock.sendall(b"\xff\n")
            assert client.receive() == ErrorNotice("message is not valid UTF-8")

        last_sent = keep_active(refused, 2 * IDLE)
        # The situation: only refused lines for over twice the idle timeout; the conversation is still open.
        assert last_sent - negotiated > 2 * IDLE
        assert client.request("still here").message == "still here"


# ------------------------------------------------------------------------------------------ issue 9


def read_to_eof(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """Everything the server sends until its FIN (bounded by ``limit`` and the socket's timeout)."""
    received = b""
    while len(received) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"no end of input after {len(received)} bytes")


def test_unframed_client_that_half_closes_at_once_is_answered(start_server: StartServer) -> None:
    """``printf 30hi | socat - TCP:...``: the chunk and the half-close both arrive inside the framing window."""
    server = start_server()
    sock = create_connection(server.address, timeout=5)
    sock.sendall(b"30hi")
    sock.shutdown(socket.SHUT_WR)
    received = read_to_eof(sock)
    sock.close()
    greeting = "你好,我是geventchat~\n".encode()
    assert received.startswith(greeting), received  # the server answered at all
    assert received == greeting + (PREFIX + "hi").encode()  # the raw reply (no newline), then EOF
    wait_until(lambda: server.stats.current == 0, timeout=5, what="the connection to close")
    assert server.stats.closed == {"peer closed": 1}
    assert server.stats.messages == 1 and server.stats.replies == 1


def test_rule5_the_idle_timeout_is_one_gevent_timeout_re_armed_when_it_fires_early(start_server: StartServer) -> None:
    """The design: one ``gevent.Timeout`` per connection raising our own ``Exception`` subclass; messages move the
    deadline and the Timeout is replaced only when it fires before it (white-box: reads the connection's state)."""
    from geventchat.server.interrupts import IdleAlarm

    server = start_server()
    with connect(server, idle_timeout=1.0) as client:
        assert client.request("first").message == "first"
        (connection,) = server._connections
        armed = connection._timeout
        assert armed is not None and isinstance(armed, gevent.Timeout) and armed.pending
        assert vars(armed) == {}  # all in slots: see IdleTimeout
        assert armed.exception is IdleAlarm and issubclass(IdleAlarm, Exception)
        assert not issubclass(IdleAlarm, gevent.Timeout)  # what is raised is ours, never a raw Timeout
        # A message every 0.1 s (a tenth of the timeout: margin for a loaded machine) until the Timeout has fired
        # early and been replaced; bounded by 100 messages.
        for index in range(100):
            if connection._timeout is not armed:
                break
            gevent.sleep(0.1)
            assert client.request(f"m{index}").message == f"m{index}"
        replaced = connection._timeout
        assert replaced is not armed, "the Timeout never fired early"
        assert replaced is not None and replaced.pending and not armed.pending
        assert replaced.seconds < 1.0  # re-armed for the time left, not a whole timeout
        assert client.request("still served").message == "still served"
        assert expect_bye(client) == "idle timeout (1s)"
    wait_until(lambda: server.stats.current == 0, timeout=5, what="the connection to close")
    assert connection._timeout is None and not replaced.pending  # disarmed on the way out


def test_idle_timeout_slots_hold_every_attribute_gevent_timeout_sets() -> None:
    """IdleTimeout saves its dict only if its slots name every attribute gevent.Timeout stores; a gevent upgrade
    that adds one makes this fail (the server still works, each idle client just costs a dict more)."""
    from geventchat._gevent_fast import IdleTimeout
    from geventchat.server.interrupts import IdleAlarm

    plain = gevent.Timeout(5, IdleAlarm)
    plain.start()
    try:
        stored = set(vars(plain))
    finally:
        plain.close()
    assert stored  # gevent.Timeout does keep its state in the instance dict
    assert stored <= set(IdleTimeout.__slots__)


def test_an_accepted_socket_has_tcp_nodelay_from_the_listener(start_server: StartServer) -> None:
    """The server sets TCP_NODELAY once on its listener, not per connection: Linux copies it to accepted sockets."""
    server = start_server()
    with connect(server, idle_timeout=5) as client:
        assert client.request("hi").message == "hi"
        (connection,) = server._connections  # the situation: one accepted connection, past its handshake
        assert connection.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.parametrize(("idle_timeout", "armed_seconds"), [(30.0, 10.0), (5.0, 5.0)])
def test_the_handshake_timeout_stays_armed_unless_the_idle_timeout_is_shorter(
    start_server: StartServer, idle_timeout: float, armed_seconds: float
) -> None:
    """A timeout line longer than the handshake timeout leaves the handshake's Timeout pending (it fires first,
    then is re-armed for what is left); a shorter one replaces it at once, so the idle timeout is never late."""
    server = start_server(handshake_timeout=10.0)
    with connect(server, idle_timeout=idle_timeout) as client:
        assert client.request("hi").message == "hi"
        (connection,) = server._connections
        assert connection.conversation.handshake_done  # the situation: the timeout line was read
        assert connection._timeout is not None and connection._timeout.pending
        assert connection._timeout.seconds == armed_seconds


def _serve_three_clients_then_stop() -> tuple[weakref.ref[ChatServer], list[Any]]:
    server = ChatServer(ServerConfig(host="127.0.0.1", port=0, stats_interval=0, linger=1.0))
    server.start()
    for _ in range(3):
        with connect(server, idle_timeout=5) as client:
            assert client.request("hi").message == "hi"
            client.quit(wait_for_close=True)
    acceptor = server._acceptor
    assert acceptor is not None
    wait_until(lambda: acceptor._greenlets.parked > 0, what="a greenlet to park")  # the situation
    parked = list(acceptor._greenlets._parked)
    server.stop()
    return weakref.ref(server), parked


def test_a_stopped_server_is_freed_with_its_parked_greenlets() -> None:
    """Greenlets parked for the next clients refer to the server (its handle): stopping it must end them, or the
    server, its rooms and its statistics live as long as the process (a cycle through suspended greenlets that
    the garbage collector cannot free)."""
    freed, parked = _serve_three_clients_then_stop()
    wait_until(lambda: all(glet.dead for glet in parked), what="the parked greenlets to end")
    gc.collect()
    assert freed() is None
