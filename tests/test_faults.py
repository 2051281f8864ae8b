"""Faults a real network produces, against an in-process server: resets mid-line, half-closed connections,
clients gone before the greeting, silent handshakes, too many connections from one address, and churn.

Each test checks that a fresh client is still served afterwards and that this process's open-file count is
back where it was once the server has let go of every connection."""

from __future__ import annotations

import socket
import time

import gevent
import pytest
from gevent.socket import socket as GeventSocket

import geventchat.server.admission
from geventchat import ChatClient, ChatServer, ClosedByServer, Framing, ProtocolConfig
from geventchat.config import DEFAULT_GREETING, DEFAULT_PREFIX
from geventchat.testing import live_greenlets, open_fds, rss_bytes, wait_until

from .faultkit import fresh_client_works, quiet, raw_connect, read_line, read_until_closed, reset_close, serving

GREETING = (DEFAULT_GREETING + "\n").encode()
PREFIX = DEFAULT_PREFIX.encode()


def settle(server: ChatServer) -> None:
    wait_until(lambda: server.stats.current == 0 and server._admission.lingering_rejects == 0, timeout=10)


def test_resets_in_the_middle_of_a_line() -> None:
    with serving(quiet()) as server:
        fds = open_fds()
        for _ in range(50):
            sock = raw_connect(server.address)
            assert read_line(sock) == GREETING
            sock.sendall(b"5\nhello\nhalf a li")
            assert read_line(sock) == PREFIX + b"hello\n"
            reset_close(sock)
        settle(server)
        resets = server.stats.closed.get("reset", 0)
        assert resets + server.stats.closed.get("peer closed", 0) == 50
        assert resets > 0
        assert fresh_client_works(server.address)
        settle(server)
        assert open_fds() == fds


def test_half_closed_client_gets_every_reply_then_eof() -> None:
    with serving(quiet()) as server:
        fds = open_fds()
        sock = raw_connect(server.address)
        sock.sendall(b"5\none\ntwo\nthree\nunterminated")
        sock.shutdown(socket.SHUT_WR)
        received = read_until_closed(sock)
        sock.close()
        assert received == GREETING + b"".join(PREFIX + m + b"\n" for m in (b"one", b"two", b"three"))
        settle(server)
        assert server.stats.closed == {"peer closed": 1}
        assert fresh_client_works(server.address)
        settle(server)
        assert open_fds() == fds


def test_clients_that_leave_before_the_greeting() -> None:
    with serving(quiet()) as server:
        fds = open_fds()
        for index in range(200):
            sock = raw_connect(server.address)
            if index % 2:
                reset_close(sock)
            else:
                sock.close()
        settle(server)
        assert server.stats.total == 200
        assert fresh_client_works(server.address)
        settle(server)
        assert open_fds() == fds


def test_handshake_timeout_closes_silent_clients_but_not_negotiated_ones() -> None:
    protocol = ProtocolConfig(framing=Framing.LINE)
    with serving(quiet(handshake_timeout=0.3, protocol=protocol)) as server:
        fds = open_fds()
        silent = raw_connect(server.address)
        partial = raw_connect(server.address)
        started = time.monotonic()
        assert read_line(silent) == GREETING and read_line(partial) == GREETING
        partial.sendall(b"3")  # half a timeout line is not a handshake
        negotiated = ChatClient.connect(*server.address, idle_timeout=1.0)
        for sock in (silent, partial):
            assert read_until_closed(sock) == b"bye: handshake timeout\n"
            sock.close()
        assert 0.25 <= time.monotonic() - started < 2.0
        # The negotiated client is held to its own idle timeout (1 s), not to the handshake timeout.
        with pytest.raises(ClosedByServer) as closed:
            negotiated.receive(timeout=5)
        assert closed.value.reason == "idle timeout (1s)"
        assert time.monotonic() - started >= 0.95
        negotiated.close()
        settle(server)
        assert server.stats.closed == {"handshake timeout": 2, "idle timeout": 1}
        assert fresh_client_works(server.address)
        settle(server)
        assert open_fds() == fds


def test_max_per_ip_turns_away_the_extra_connection_with_a_reason() -> None:
    with serving(quiet(max_per_ip=3)) as server:
        fds = open_fds()
        held = [ChatClient.connect(*server.address, idle_timeout=30) for _ in range(3)]
        with pytest.raises(ClosedByServer) as refused:
            ChatClient.connect(*server.address, idle_timeout=30)
        assert refused.value.reason == "too many connections from your address"
        # Another address is not affected, and a slot comes back when a client leaves.
        assert fresh_client_works(server.address, source_address=("127.0.0.2", 0))
        held.pop().quit()
        wait_until(lambda: server.stats.current == 2, timeout=5)
        held.append(ChatClient.connect(*server.address, idle_timeout=30))
        assert held[-1].request("back in").message == "back in"
        for client in held:
            client.quit()
        settle(server)
        assert server.stats.closed["too many connections from your address"] == 1
        assert len(server._admission.per_ip) == 0  # type: ignore[arg-type]
        assert open_fds() == fds


def reset_by_server(sock: GeventSocket, within: float) -> bool:
    """Send a byte every 10 ms until the server's kernel answers with a reset (a send fails): True, or False if
    none within ``within`` seconds. A closed socket resets what arrives; a lingering one reads and discards it."""
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.01) + 1):  # bounded; the deadline usually ends it first
        try:
            sock.send(b".")
        except OSError:  # ECONNRESET, or EPIPE once the reset has been reported
            return True
        if time.monotonic() > deadline:
            break
        gevent.sleep(0.01)
    return False


def test_past_the_cap_on_lingering_rejects_a_rejected_client_is_closed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real cap (256) made small, so that reaching it takes two clients rather than a flood.
    monkeypatch.setattr(geventchat.server.admission, "_MAX_LINGERING_REJECTS", 2)
    with serving(quiet(max_connections=1, linger=30.0)) as server:
        fds = open_fds()
        held = ChatClient.connect(*server.address, idle_timeout=60)
        lingering = []
        for _ in range(2):
            sock = raw_connect(server.address)
            lingering.append(sock)
            assert read_until_closed(sock) == b"bye: server full\n"  # the bye, then the server's half-close
        # The situation: both rejected clients held open by a lingering close, as many as the cap allows.
        wait_until(lambda: server._admission.lingering_rejects == 2, timeout=5)
        past_cap = raw_connect(server.address)
        assert read_until_closed(past_cap) == b"bye: server full\n"
        for sock in lingering:
            sock.send(b".")  # were these closed too, this byte would be reset before past_cap's below
        # What must hold: the client past the cap still gets its bye, but its socket is closed at once, not
        # after the 30 s linger; the lingering ones are still read (their bytes above were not reset).
        assert reset_by_server(past_cap, within=5)
        assert not any(reset_by_server(sock, within=0) for sock in lingering)
        assert server._admission.lingering_rejects == 2
        assert server.stats.rejected_full == 3
        for sock in [past_cap, *lingering]:
            sock.close()
        held.quit()
        settle(server)
        assert fresh_client_works(server.address)
        settle(server)
        assert open_fds() == fds


#: Churn soak bounds (the longer run is benchmarks/soak.py).
SOAK_CYCLES = 2000
SOAK_CONCURRENCY = 10
SOAK_RSS_GROWTH = 4 << 20


def test_churn_soak_leaks_no_fds_greenlets_or_memory() -> None:
    with serving(quiet()) as server:

        def cycles(count: int) -> None:
            def one_client(n: int) -> None:
                for i in range(n):
                    with ChatClient.connect(*server.address, idle_timeout=5) as client:
                        assert client.request(f"m{i}").message == f"m{i}"
                        client.quit()

            workers = [gevent.spawn(one_client, count // SOAK_CONCURRENCY) for _ in range(SOAK_CONCURRENCY)]
            gevent.joinall(workers, timeout=60, raise_error=True)
            assert all(w.successful() for w in workers)
            settle(server)

        cycles(500)  # warm-up: allocator pools, gevent's free lists
        fds, greenlets, rss = open_fds(), live_greenlets(), rss_bytes()
        started = time.monotonic()
        cycles(SOAK_CYCLES)
        elapsed = time.monotonic() - started
        print(
            f"soak: {SOAK_CYCLES} cycles in {elapsed:.1f}s; fds {fds}->{open_fds()}; greenlets {greenlets}->"
            f"{live_greenlets()}; rss {rss >> 10}->{rss_bytes() >> 10} KiB"
        )
        assert server.stats.closed["quit"] == SOAK_CYCLES + 500
        assert open_fds() == fds
        assert live_greenlets() <= greenlets + 2
        assert rss_bytes() - rss < SOAK_RSS_GROWTH


def _largest_send_buffer() -> int:
    """The most a TCP send buffer grows to on this machine (tcp_wmem's maximum; Linux's default if unknown)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
            return int(wmem.read().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 << 20


def _closing_or_closed(server: ChatServer) -> bool:
    """The server's one connection has ended its conversation: it is closing (perhaps still trying to send a last
    line) or already gone. Server state, because a client that does not read cannot tell the difference."""
    connections = list(server._connections)
    return server.stats.total == 1 and all(c.conversation.closed for c in connections)


def test_idle_timeout_in_the_middle_of_a_reply_sends_no_bye_glued_to_it() -> None:
    # One reply line far larger than every buffer between the server and a client that does not read (our receive
    # buffer is 4 KiB; the server's send buffer grows up to tcp_wmem's maximum): the server's write of it must go
    # out in part and then block, so the idle timeout fires in the middle of that one reply.
    size = 2 * _largest_send_buffer()
    idle = 1.0  # the client sends its whole line well within it, so the timeout can only fire in the write
    protocol = ProtocolConfig(max_line=size)
    with serving(quiet(linger=30.0, protocol=protocol)) as server:
        fds = open_fds()
        sock = GeventSocket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.address)
        assert read_line(sock) == GREETING
        message = b"w" * size
        sock.sendall(f"{idle:g}\n".encode() + message + b"\n")
        full_reply = PREFIX + message + b"\n"
        # Not reading until the server has given up on us. Then read while it may still be lingering (30 s): a
        # server that queued a bye after the cut write would deliver it now, glued to the cut line.
        wait_until(lambda: _closing_or_closed(server), timeout=idle + 10)
        data = read_until_closed(sock, timeout=10, limit=2 * size)
        sock.close()
        # The situation under test: the reply had begun and was cut (one line, so a cut one ends without "\n").
        assert data.startswith(PREFIX), data[:80]
        assert len(data) < len(full_reply), f"not cut: {len(data)} bytes arrived, the reply has {len(full_reply)}"
        # What must hold: nothing after the cut; above all no "bye: " glued to half a line.
        assert full_reply.startswith(data), data[-80:]
        settle(server)
        assert server.stats.closed == {"idle timeout": 1}
        assert fresh_client_works(server.address)
        settle(server)
        assert open_fds() == fds
