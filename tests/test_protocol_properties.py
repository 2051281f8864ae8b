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
