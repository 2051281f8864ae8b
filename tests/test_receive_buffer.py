"""The receive buffer both conversations parse lines with, with bytes alone: whole, one byte at a time, coalesced."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geventchat.protocol import ClientConversation, LineTooLong, ReceiveBuffer, RemoteProtocolError

Split = Callable[[bytes], list[bytes]]


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def in_threes(data: bytes) -> list[bytes]:
    return [data[i : i + 3] for i in range(0, len(data), 3)]


SPLITS = [whole, bytewise, in_threes]


def feed(buffer: ReceiveBuffer, chunks: list[bytes]) -> tuple[list[bytes], bool, int]:
    """Append each chunk and drain the lines, as a conversation does. Returns (lines, whether LineTooLong was raised,
    the most bytes held between chunks)."""
    lines: list[bytes] = []
    high_water = 0
    try:
        for chunk in chunks:
            buffer += chunk
            lines.extend(buffer.lines())
            high_water = max(high_water, len(buffer))
    except LineTooLong:
        return lines, True, high_water
    return lines, False, high_water


@pytest.mark.parametrize("split", SPLITS)
def test_lines_come_out_alike_whatever_the_chunking(split: Split) -> None:
    buffer = ReceiveBuffer(10)
    lines, overflowed, _ = feed(buffer, split(b"a\nb\rb\r\n\r\n\nccc"))
    assert not overflowed
    assert lines == [b"a", b"b\rb", b"", b""]  # '\r\n' ends a line too; a lone '\r' is the line's
    assert len(buffer) == 3 and buffer.take() == b"ccc"
    assert len(buffer) == 0


@pytest.mark.parametrize("split", SPLITS)
def test_a_line_of_exactly_the_cap_passes_one_byte_more_does_not(split: Split) -> None:
    at_cap = ReceiveBuffer(5)
    lines, overflowed, high_water = feed(at_cap, split(b"12345\n"))
    assert not overflowed and lines == [b"12345"]
    assert high_water <= 5 and len(at_cap) == 0
    over = ReceiveBuffer(5)
    lines, overflowed, high_water = feed(over, split(b"123456\n"))
    assert overflowed and lines == []
    assert len(over) == 0  # past the cap everything held is dropped
    assert high_water <= 5


@pytest.mark.parametrize("split", SPLITS)
def test_the_cap_counts_a_carriage_return(split: Split) -> None:
    """What a line holds before its newline: the server's limit plus one leaves room for the '\r' of '\r\n'."""
    fits = ReceiveBuffer(5)
    lines, overflowed, _ = feed(fits, split(b"1234\r\n"))
    assert not overflowed and lines == [b"1234"]
    over = ReceiveBuffer(5)
    lines, overflowed, _ = feed(over, split(b"ok\r\n12345\r\n"))
    assert overflowed and lines == [b"ok"]


@pytest.mark.parametrize("split", SPLITS)
def test_lines_before_an_over_long_one_come_out_first(split: Split) -> None:
    buffer = ReceiveBuffer(5)
    lines, overflowed, _ = feed(buffer, split(b"ok\nfine\n" + b"x" * 9 + b"\nafter\n"))
    assert overflowed
    assert lines == [b"ok", b"fine"]
    assert len(buffer) == 0


@pytest.mark.parametrize("split", SPLITS)
def test_an_unfinished_line_over_the_cap_is_refused_before_its_newline(split: Split) -> None:
    buffer = ReceiveBuffer(8)
    lines, overflowed, high_water = feed(buffer, split(b"one\n" + b"y" * 9))
    assert overflowed and lines == [b"one"]
    assert high_water <= 8 and len(buffer) == 0


def test_whole_line_takes_a_lone_line_without_buffering_it() -> None:
    buffer = ReceiveBuffer(5)
    assert buffer.whole_line(b"hi\n") == b"hi"
    assert buffer.whole_line(b"12345\n") == b"12345"
    assert buffer.whole_line(b"1234\r\n") == b"1234"
    assert len(buffer) == 0
    # Anything else is for += and lines(): two lines, no newline, nothing, over the cap, or bytes already held.
    assert buffer.whole_line(b"a\nb\n") is None
    assert buffer.whole_line(b"hi") is None
    assert buffer.whole_line(b"") is None
    assert buffer.whole_line(b"123456\n") is None
    buffer += b"h"
    assert buffer.whole_line(b"i\n") is None
    buffer += b"i\n"
    assert list(buffer.lines()) == [b"hi"]


def test_the_error_says_it_is_the_peers_fault_and_the_client_names_the_server() -> None:
    buffer = ReceiveBuffer(3)
    buffer += b"abcd"
    with pytest.raises(LineTooLong, match="peer sent a line longer than 3 bytes") as caught:
        list(buffer.lines())
    assert isinstance(caught.value, RemoteProtocolError) and caught.value.limit == 3
    client = ClientConversation("p:", max_line=2)  # cap: 2 + len('p:') + 1 for a '\r'
    with pytest.raises(LineTooLong, match="server sent a line longer than 5 bytes"):
        client.receive_data(b"abcdef\n")


def test_clear_drops_everything_and_parsing_starts_afresh() -> None:
    buffer = ReceiveBuffer(10)
    buffer += b"partial"
    assert list(buffer.lines()) == []
    buffer.clear()
    buffer += b"new\n"
    assert list(buffer.lines()) == [b"new"] and len(buffer) == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(st.sampled_from([b"a", b"\n", b"\r", b"xyz", b"\r\n", b"1234567"]), max_size=30).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=10),
)
def test_chunking_changes_nothing(stream: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points) if b > a]
    whole_buffer, split_buffer = ReceiveBuffer(6), ReceiveBuffer(6)
    whole_lines, whole_overflowed, _ = feed(whole_buffer, [stream])
    split_lines, split_overflowed, high_water = feed(split_buffer, chunks)
    assert (split_lines, split_overflowed) == (whole_lines, whole_overflowed)
    assert bytes(split_buffer) == bytes(whole_buffer)
    assert high_water <= 6
