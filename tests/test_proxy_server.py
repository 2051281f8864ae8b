"""The server behind a load balancer: ``proxy_protocol=True`` reads the PROXY header first (loopback, port 0)."""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from collections.abc import Callable

import pytest
from gevent.socket import create_connection
from gevent.socket import socket as GeventSocket

from geventchat.proxy_protocol import V2_SIGNATURE
from geventchat.server import ChatServer
from geventchat.testing import wait_until

from .test_cli import geventchat
from .test_tls import pki  # noqa: F401  (the fixture)

StartServer = Callable[..., ChatServer]
GREETING = "你好,我是geventchat~"
PREFIX = "我收到了你的信息:"


def read_lines(sock: GeventSocket, count: int) -> list[str]:
    """Read ``count`` lines (bounded by the socket timeout); [] if the server closed first."""
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return [line.decode() for line in data.split(b"\n")[:count]] if data.count(b"\n") >= count else []


def v2_local() -> bytes:
    return V2_SIGNATURE + b"\x20\x00" + struct.pack("!H", 0)


def v2_tcp4(src: str, sport: int, dst: str, dport: int) -> bytes:
    block = bytes(map(int, src.split("."))) + bytes(map(int, dst.split("."))) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(block)) + block


def messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        (b"PROXY TCP4 198.51.100.7 203.0.113.1 40022 8888\r\n", "198.51.100.7:40022"),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 40023 8888\r\n", "[2001:db8::7]:40023"),
        (v2_tcp4("198.51.100.8", 40024, "203.0.113.1", 8888), "198.51.100.8:40024"),
    ],
)
def test_the_real_client_address_is_logged_and_the_conversation_goes_on(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, header: bytes, shown: str
) -> None:
    server = start_server(proxy_protocol=True)
    with caplog.at_level(logging.DEBUG, logger="geventchat.server"):
        # The header and the client's first lines in one segment: what follows the header is the conversation's.
        with create_connection(server.address, timeout=5) as sock:
            sock.sendall(header + b"5\nhello\n")
            assert read_lines(sock, 2) == [GREETING, PREFIX + "hello"]
            sock.sendall(b":q\n")
            assert read_lines(sock, 1) == [PREFIX + ":q"]
        wait_until(lambda: server.stats.current == 0, what="the connection to end")
    log = messages(caplog)
    assert f"{shown} connected" in log and f"{shown} disconnected: quit" in log
    assert f"{shown}: MessageReceived" in log
    assert "127.0.0.1" not in log  # the load balancer's (here: the test's) address is nowhere


def test_a_health_check_local_header_keeps_the_connection_address(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(proxy_protocol=True)
    with caplog.at_level(logging.DEBUG, logger="geventchat.server"):
        with create_connection(server.address, timeout=5) as sock:
            sock.sendall(v2_local())
            assert read_lines(sock, 1) == [GREETING]
            host, port = sock.getsockname()[:2]
            local = f"{host}:{port}"
        wait_until(lambda: server.stats.current == 0, what="the connection to end")
    assert f"{local} connected" in messages(caplog)
    assert server.stats.closed == {"peer closed": 1}


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (b"30\n", "no PROXY protocol header: the connection starts with b'30\\n'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed PROXY v1 header"),
        (b"PROXY TCP4", "connection closed after 10 bytes"),
    ],
)
def test_a_connection_without_a_valid_header_is_closed_without_a_greeting(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, sent: bytes, reason: str
) -> None:
    server = start_server(proxy_protocol=True)
    with caplog.at_level(logging.WARNING, logger="geventchat.server"):
        with create_connection(server.address, timeout=5) as sock:
            sock.sendall(sent)
            if sent.startswith(b"PROXY TCP4") and not sent.endswith(b"\n"):
                sock.shutdown(socket.SHUT_WR)  # the peer hangs up mid-header
            assert read_lines(sock, 1) == []  # closed, nothing sent: not even the greeting
        wait_until(lambda: server.stats.current == 0, what="the connection to end")
    log = messages(caplog)
    assert "invalid PROXY protocol header (the load balancer's side" in log and reason in log
    assert server.stats.closed == {"invalid proxy header": 1}


def test_a_silent_peer_is_closed_after_the_header_timeout(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(proxy_protocol=True)
    server.proxy_header_timeout = 0.2
    with caplog.at_level(logging.WARNING, logger="geventchat.server"):
        with create_connection(server.address, timeout=5) as sock:
            sock.sendall(b"PROXY ")
            assert read_lines(sock, 1) == []
    assert "no complete header within 0.2s" in messages(caplog)


def test_without_the_flag_a_header_is_just_a_bad_timeout_line(start_server: StartServer) -> None:
    server = start_server(default_timeout=5)
    with create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhello\n")
        greeting, notice, reply = read_lines(sock, 3)
    assert greeting == GREETING and notice.startswith("error: ") and reply == PREFIX + "hello"


def test_the_command_line_flag_turns_it_on() -> None:
    result = geventchat("serve", "--help")
    assert "--proxy-protocol" in result.stdout
    from geventchat.options import server_config, server_parser

    assert server_config(server_parser().parse_args(["--proxy-protocol"])).proxy_protocol is True
    assert server_config(server_parser().parse_args([])).proxy_protocol is False
    # The comparison models have no PROXY support: refusing is better than treating the header as a message.
    refused = geventchat("--proxy-protocol", "--model", "thread", "--port", "0")
    assert refused.returncode == 2 and "--proxy-protocol applies to the gevent model only" in refused.stderr


def test_the_per_address_cap_counts_the_real_client_not_the_load_balancer(start_server: StartServer) -> None:
    server = start_server(proxy_protocol=True, max_per_ip=1)
    header_a = b"PROXY TCP4 198.51.100.7 203.0.113.1 40000 8888\r\n"
    header_b = b"PROXY TCP4 198.51.100.8 203.0.113.1 40001 8888\r\n"
    with create_connection(server.address, timeout=5) as first, create_connection(server.address, timeout=5) as other:
        first.sendall(header_a)
        other.sendall(header_b)  # all from 127.0.0.1, but another client: served
        assert read_lines(first, 1) == [GREETING] and read_lines(other, 1) == [GREETING]
        with create_connection(server.address, timeout=5) as again:
            again.sendall(header_a)  # the same client a second time: refused
            assert read_lines(again, 1) == ["bye: too many connections from your address"]


def test_connections_still_sending_their_header_count_toward_the_limit(start_server: StartServer) -> None:
    server = start_server(proxy_protocol=True, max_connections=1)
    with create_connection(server.address, timeout=5) as slow:
        slow.sendall(b"PROXY TCP4 ")  # holds its slot while the header is incomplete
        wait_until(lambda: server._admission.awaiting_header == 1, what="the header read to start")
        with create_connection(server.address, timeout=5) as refused:
            assert read_lines(refused, 1) == ["bye: server full"]
        slow.sendall(b"198.51.100.7 203.0.113.1 40000 8888\r\n")
        assert read_lines(slow, 1) == [GREETING]


def test_tls_after_the_header_even_in_the_same_segment(start_server: StartServer, pki: dict[str, str]) -> None:  # noqa: F811
    """The header is consumed byte-exact: a ClientHello sent in the same segment is left for the TLS handshake."""
    server = start_server(proxy_protocol=True, tls_cert=pki["cert"], tls_key=pki["key"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki["ca"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    header = b"PROXY TCP4 198.51.100.9 203.0.113.1 40002 8888\r\n"
    with create_connection(server.address, timeout=5) as sock:

        def pump(operation: Callable[[], object]) -> object:
            for _ in range(50):  # a handshake or a read takes a few round trips
                try:
                    return operation()
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    chunk = sock.recv(65536)
                    assert chunk, "the server closed the connection"
                    incoming.write(chunk)
            raise AssertionError("no progress")

        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            sock.sendall(header + outgoing.read())  # the PROXY header and the ClientHello in one segment
            incoming.write(sock.recv(65536))
        pump(tls.do_handshake)
        greeting = b""
        while b"\n" not in greeting:
            greeting += pump(lambda: tls.read(4096))  # type: ignore[operator]
    assert greeting.decode().rstrip("\n") == GREETING
    assert server.stats.closed.get("invalid proxy header") is None
