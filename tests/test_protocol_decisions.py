"""What the conversation decides for its shells, with bytes alone: which timeout is in force and which one expired,
when the framing window is open, and that every way a message arrives is answered by the same accept path."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from geventchat.config import Framing, ProtocolConfig
from geventchat.protocol import (
    CloseReason,
    ConnectionClosed,
    FramingChosen,
    MessageReceived,
    QuitReceived,
    ServerConversation,
    TimeoutNegotiated,
)

PREFIX = "我收到了你的信息:".encode()
Split = Callable[[bytes], list[bytes]]


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def coalesced_with_the_next_message(data: bytes) -> list[bytes]:
    return [data + b"next\n"]


SPLITS = [whole, bytewise, coalesced_with_the_next_message]


def conversation(
    framing: Framing = Framing.LINE, *, handshake_timeout: float | None = None, framing_window: float = 0.1
) -> ServerConversation:
    config = ProtocolConfig(framing=framing, default_timeout=60)
    conv = ServerConversation(config, handshake_timeout=handshake_timeout, framing_window=framing_window)
    assert conv.data_to_send()  # the greeting
    return conv


def window(conv: ServerConversation) -> float | None:
    """Read through a call: mypy would otherwise keep an earlier assert's narrowing of the property."""
    return conv.framing_window


def feed(conv: ServerConversation, chunks: list[bytes]) -> list[object]:
    events: list[object] = []
    for chunk in chunks:
        events += conv.receive_data(chunk)
    return events


# -------------------------------------------------------------------------------------- which timeout is in force


@pytest.mark.parametrize("split", SPLITS)
def test_the_handshake_timeout_is_in_force_until_the_timeout_line_then_the_idle_timeout(split: Split) -> None:
    conv = conversation(handshake_timeout=10)
    assert conv.current_timeout == 10
    feed(conv, [b"3"])  # part of the timeout line is not the timeout line
    assert conv.current_timeout == 10
    events = feed(conv, split(b"0\n"))
    assert TimeoutNegotiated(30.0, 30.0) in events
    assert conv.current_timeout == 30


def test_an_invalid_timeout_line_ends_the_handshake_too() -> None:
    conv = conversation(handshake_timeout=10)
    events = conv.receive_data(b"soon\n")
    assert events and conv.handshake_done
    assert conv.current_timeout == 60  # the default, no longer capped by the handshake timeout


def test_a_handshake_timeout_longer_than_the_idle_timeout_never_applies() -> None:
    conv = conversation(handshake_timeout=90)
    assert conv.current_timeout == 60
    assert conv.expire() == [ConnectionClosed(CloseReason.IDLE_TIMEOUT, "idle timeout (60s)")]
    assert conv.data_to_send() == b"bye: idle timeout (60s)\n"


def test_without_a_handshake_timeout_only_the_idle_timeout_applies() -> None:
    conv = conversation()
    assert conv.current_timeout == 60
    assert conv.expire() == [ConnectionClosed(CloseReason.IDLE_TIMEOUT, "idle timeout (60s)")]


# ------------------------------------------------------------------------------------------ which one expired


@pytest.mark.parametrize("pending", [b"", b"3", b"30"])
def test_expire_in_the_handshake_closes_with_handshake_timeout(pending: bytes) -> None:
    conv = conversation(handshake_timeout=10)
    if pending:
        conv.receive_data(pending)
    assert not conv.handshake_done
    assert conv.expire() == [ConnectionClosed(CloseReason.HANDSHAKE_TIMEOUT, "handshake timeout")]
    assert conv.closed and conv.close_reason is CloseReason.HANDSHAKE_TIMEOUT
    assert conv.data_to_send() == b"bye: handshake timeout\n"
    assert conv.expire() == []  # once


@pytest.mark.parametrize("split", SPLITS)
def test_expire_after_the_handshake_closes_with_idle_timeout(split: Split) -> None:
    conv = conversation(handshake_timeout=10)
    feed(conv, split(b"0.5\n"))
    assert conv.handshake_done and conv.current_timeout == 0.5
    conv.data_to_send()
    assert conv.expire() == [ConnectionClosed(CloseReason.IDLE_TIMEOUT, "idle timeout (0.5s)")]
    assert conv.data_to_send() == b"bye: idle timeout (0.5s)\n"


def test_expire_in_raw_framing_sends_no_bye() -> None:
    conv = conversation(Framing.RAW, handshake_timeout=10)
    assert conv.receive_data(b"5") == [TimeoutNegotiated(5.0, 5.0)]
    assert conv.current_timeout == 5
    assert conv.expire() == [ConnectionClosed(CloseReason.IDLE_TIMEOUT, None)]
    assert conv.data_to_send() == b""


# ------------------------------------------------------------------------------------- the framing window


@pytest.mark.parametrize("split", [whole, bytewise])
def test_the_framing_window_is_open_while_auto_framing_waits_for_a_newline(split: Split) -> None:
    conv = conversation(Framing.AUTO, framing_window=0.25)
    assert window(conv) is None  # nothing pending, nothing to decide
    assert feed(conv, split(b"30hi")) == []
    assert conv.awaiting_framing_decision and window(conv) == 0.25
    events = conv.settle_framing()
    assert events[0] == FramingChosen(Framing.RAW) and MessageReceived(b"hi") in events
    assert window(conv) is None


def test_a_newline_closes_the_framing_window() -> None:
    conv = conversation(Framing.AUTO, framing_window=0.25)
    conv.receive_data(b"30")
    assert window(conv) == 0.25
    assert conv.receive_data(b"\n")[0] == FramingChosen(Framing.LINE)
    assert window(conv) is None
    conv.receive_data(b"no newline yet")
    assert window(conv) is None  # decided: a line client's unfinished line, no window


def test_forced_framings_never_open_the_window() -> None:
    for framing in (Framing.LINE, Framing.RAW):
        conv = conversation(framing, framing_window=0.25)
        conv.receive_data(b"30")
        assert conv.framing is framing and window(conv) is None


def test_expire_while_the_framing_window_is_open_is_a_handshake_timeout() -> None:
    conv = conversation(Framing.AUTO, handshake_timeout=10, framing_window=0.25)
    conv.receive_data(b"30")
    assert window(conv) == 0.25
    assert conv.expire() == [ConnectionClosed(CloseReason.HANDSHAKE_TIMEOUT, "handshake timeout")]
    assert window(conv) is None


# ---------------------------------------------------------------------------- one accept path, ':q' decided once


QUIT_EVENTS = [MessageReceived(b":q"), QuitReceived(), ConnectionClosed(CloseReason.QUIT)]


@pytest.mark.parametrize(
    ("framing", "chunks", "reply"),
    [
        (Framing.LINE, [b"5\n", b":q\n"], PREFIX + b":q\n"),  # the one-line fast path
        (Framing.LINE, [b"5\n:q\n"], PREFIX + b":q\n"),  # the line path, coalesced
        (Framing.LINE, [b"5\n", b":", b"q", b"\r\n"], PREFIX + b":q\n"),  # the line path, byte by byte, CRLF
        (Framing.LINE, [b":q\n"], PREFIX + b":q\n"),  # in place of the timeout line
        (Framing.RAW, [b"5", b":q"], PREFIX + b":q"),  # a raw chunk
        (Framing.RAW, [b":q"], PREFIX + b":q"),  # a raw first chunk with no timeout
    ],
)
def test_quit_is_answered_and_closes_alike_on_every_path(framing: Framing, chunks: list[bytes], reply: bytes) -> None:
    conv = conversation(framing)
    events = feed(conv, chunks)
    assert conv.closed
    assert events[-3:] == QUIT_EVENTS  # after the timeout's event, if any
    assert conv.data_to_send() == reply
    assert conv.messages_received == 1
