"""Peer-controlled text is never interpreted: control characters are escaped wherever it is logged or shown."""

from __future__ import annotations

import logging

import pytest

from geventchat import ClosedByServer
from geventchat.protocol import escape_controls
from geventchat.testing import wait_until

from .faultkit import quiet, raw_connect, read_line, read_until_closed, serving

HOSTILE = b"\x1b[2J\x1b]0;pwned\x07\rline\x00\x7f\xc2\x9b"  # clear screen, set title, bell, CR, NUL, DEL, C1 CSI


def test_escape_controls_leaves_printable_text_alone() -> None:
    assert escape_controls("我收到了你的信息: plain text") == "我收到了你的信息: plain text"
    escaped = escape_controls(HOSTILE.decode())
    assert escaped.isprintable() and "\\x1b" in escaped and "\\r" in escaped and "\\x9b" in escaped


def test_server_debug_log_escapes_peer_bytes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="geventchat.server")
    with serving(quiet()) as server:
        sock = raw_connect(server.address)
        read_line(sock)
        sock.sendall(HOSTILE + b"\n" + HOSTILE + b"\n:q\n")  # as a timeout line, then as a message
        assert read_until_closed(sock).count(b"\n") == 3  # error notice, echo, echo of :q
        sock.close()
        wait_until(lambda: server.stats.current == 0, timeout=5)
    messages = [record.getMessage() for record in caplog.records]
    assert any("pwned" in message for message in messages)
    for message in messages:
        assert message.isprintable(), repr(message)


def test_client_error_text_escapes_the_servers_bye() -> None:
    closed = ClosedByServer(HOSTILE.decode())
    assert str(closed).isprintable()
    assert closed.reason == HOSTILE.decode()  # the raw reason stays available to code
