"""Property tests of the sans-IO core (hypothesis): no sockets.

Line framing must not depend on how TCP chunks the stream: any split gives the same events and the same output
as the whole stream. Raw and auto framing depend on chunking by design (a raw message *is* a chunk), so for
them the properties are safety ones: only documented errors, and buffers never above the limit.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geventchat.config import Framing, ProtocolConfig
from geventchat.protocol import (
    ClientConversation,
    ConnectionClosed,
    RemoteProtocolError,
    ServerConversation,
)

MAX_LINE = 12
# Pieces that hit the interesting paths: newlines, '\r', the quit line, timeouts, invalid and multi-byte UTF-8.
PIECES = [b"a", b"\n", b"\r", b"\r\n", b":q", b"30", b"0.5", b"-1", b"\xff", "你".encode(), b" ", b"x" * 9, b"inf"]
streams = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join),
    st.binary(max_size=120),
)
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(stream)]:
        if point > start:
            pieces.append(stream[start:point])
            start = point
    return pieces


def feed_server(conversation: ServerConversation, chunks: list[bytes]) -> tuple[list[object], bytes]:
    """Feed the chunks then end of input, as a shell would; stop at the close. Checks the buffer cap as it goes."""
    events: list[object] = []
    out = conversation.data_to_send()
    for chunk in [*chunks, b""]:
        if conversation.closed:
            break
        events += conversation.receive_data(chunk)
        out += conversation.data_to_send()
        assert conversation.pending_bytes <= MAX_LINE + 1
    assert conversation.closed and isinstance(events[-1], ConnectionClosed)
    return events, out


def line_config() -> ProtocolConfig:
    return ProtocolConfig(max_line=MAX_LINE, framing=Framing.LINE)


@PROPERTY_SETTINGS
@given(stream=streams, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_line_framing_is_independent_of_chunking(stream: bytes, cuts: list[int]) -> None:
    whole = feed_server(ServerConversation(line_config()), [stream] if stream else [])
    pieces = feed_server(ServerConversation(line_config()), split(stream, cuts))
    assert pieces == whole


@PROPERTY_SETTINGS
@given(stream=streams)
def test_line_framing_byte_by_byte_equals_whole(stream: bytes) -> None:
    whole = feed_server(ServerConversation(line_config()), [stream] if stream else [])
    one_by_one = feed_server(ServerConversation(line_config()), [stream[i : i + 1] for i in range(len(stream))])
    assert one_by_one == whole


@PROPERTY_SETTINGS
@given(
    framing=st.sampled_from([Framing.AUTO, Framing.RAW]),
    chunks=st.lists(streams, max_size=8),
    settle_after=st.lists(st.booleans(), max_size=8),
)
def test_auto_and_raw_framing_raise_nothing_and_stay_bounded(
    framing: Framing, chunks: list[bytes], settle_after: list[bool]
) -> None:
    conversation = ServerConversation(ProtocolConfig(max_line=MAX_LINE, framing=framing))
    for index, chunk in enumerate(c for c in chunks if c):
        if conversation.closed:
            break
        conversation.receive_data(chunk)  # any exception here fails the test
        assert conversation.pending_bytes <= MAX_LINE + 1
        if index < len(settle_after) and settle_after[index]:
            conversation.settle_framing()  # the detection window passed with no newline
            assert conversation.pending_bytes <= MAX_LINE + 1
        conversation.data_to_send()
    if not conversation.closed:
        events = conversation.receive_data(b"")
        assert isinstance(events[-1], ConnectionClosed)
    assert conversation.closed and conversation.pending_bytes == 0


def feed_client(chunks: list[bytes]) -> list[object]:
    """Client events for the chunks then end of input; a RemoteProtocolError is recorded as the last 'event'."""
    conversation = ClientConversation("P:", framing=Framing.LINE, max_line=MAX_LINE)
    events: list[object] = []
    try:
        for chunk in [*chunks, b""]:
            events += conversation.receive_data(chunk)
            assert conversation.pending_bytes <= conversation._buffer.max_line
    except RemoteProtocolError:
        events.append(RemoteProtocolError)
    return events


@PROPERTY_SETTINGS
@given(stream=streams, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_client_line_framing_is_independent_of_chunking(stream: bytes, cuts: list[int]) -> None:
    pieces = feed_client(split(stream, cuts))
    whole = feed_client([stream] if stream else [])
    # Whether the server broke the protocol does not depend on chunking. The events of the call that raised are
    # lost (like any exception from a parser), so with an error the whole-stream events are a prefix.
    assert (pieces[-1:] == [RemoteProtocolError]) == (whole[-1:] == [RemoteProtocolError])
    if whole[-1:] == [RemoteProtocolError]:
        assert pieces[: len(whole) - 1] == whole[:-1]
    else:
        assert pieces == whole


@PROPERTY_SETTINGS
@given(chunks=st.lists(streams, max_size=8))
def test_client_raw_framing_never_raises(chunks: list[bytes]) -> None:
    conversation = ClientConversation("P:", framing=Framing.RAW, max_line=MAX_LINE)
    for chunk in chunks:
        if chunk:
            conversation.receive_data(chunk)
    assert isinstance(conversation.receive_data(b"")[-1], ConnectionClosed)


def feed_server_answering_first(conversation: ServerConversation, chunks: list[bytes]) -> tuple[bytes, int]:
    """As the server's plain-TCP loop does: try :meth:`ServerConversation.answer_line`, else ``receive_data``.
    Returns the output and how many chunks the fast path answered."""
    out = conversation.data_to_send()
    answered = 0
    for chunk in [*chunks, b""]:
        if conversation.closed:
            break
        reply = conversation.answer_line(chunk)
        if reply is not None:
            answered += 1
            out += reply
            continue
        conversation.receive_data(chunk)
        out += conversation.data_to_send()
    return out, answered


@PROPERTY_SETTINGS
@given(
    stream=streams,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    framing=st.sampled_from([Framing.LINE, Framing.AUTO]),
)
def test_answering_plain_lines_first_changes_nothing_the_peer_sees(
    stream: bytes, cuts: list[int], framing: Framing
) -> None:
    config = ProtocolConfig(max_line=MAX_LINE, framing=framing, prefix="> ")
    chunks = split(b"5\n" + stream, cuts)  # after a timeout line, so that plain lines can take the fast path
    plain = ServerConversation(config)
    expected = feed_server(plain, chunks)[1]
    fast = ServerConversation(config)
    out, _answered = feed_server_answering_first(fast, chunks)
    assert out == expected
    assert fast.messages_received == plain.messages_received
    assert fast.close_reason == plain.close_reason


def test_answer_line_takes_plain_lines_and_leaves_everything_else() -> None:
    conversation = ServerConversation(ProtocolConfig(max_line=MAX_LINE, framing=Framing.AUTO, prefix="> "))
    conversation.data_to_send()
    assert conversation.answer_line(b"5\n") is None  # the timeout line: the handshake is receive_data's
    conversation.receive_data(b"5\n")
    conversation.data_to_send()
    assert conversation.answer_line(b"hello\n") == b"> hello\n"  # the situation: the fast path answered
    assert conversation.messages_received == 1 and conversation.data_to_send() == b""  # counted, nothing queued
    declined = [b":q\n", b":nick x\n", b"a\r\n", b"\n", b"two\nlines\n", b"open", "你\n".encode(), b"x" * 13 + b"\n"]
    for chunk in declined:
        assert conversation.answer_line(chunk) is None, chunk
    assert conversation.messages_received == 1 and conversation.pending_bytes == 0  # declining changed nothing
    conversation.receive_data(b"par")
    assert conversation.answer_line(b"t\n") is None  # something pending: the buffer must join it


class InRoom:
    in_room = True

    def on_message(self, message: bytes) -> bytes | None:
        return None


def test_answer_line_leaves_a_member_in_a_room_to_the_chat_hook() -> None:
    conversation = ServerConversation(ProtocolConfig(max_line=MAX_LINE, framing=Framing.LINE, prefix=""))
    conversation.receive_data(b"5\n")
    conversation.chat = hook = InRoom()
    assert conversation.answer_line(b"hello\n") is None  # fanned out: receive_data's job
    hook.in_room = False
    assert conversation.answer_line(b"hello\n") == b"hello\n"
