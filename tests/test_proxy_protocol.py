"""The PROXY protocol reader with bytes alone: every header whole, byte by byte, and with trailing data."""

from __future__ import annotations

import struct

import pytest

from geventchat.proxy_protocol import (
    DEFAULT_MAX_HEADER,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    InvalidProxyHeader,
    ProxyCommand,
    ProxyHeader,
    ProxyHeaderReader,
    ProxyReaderMisuse,
    parse_proxy_header,
)

TRAILING = b"30\nhello\n"


def v2(command: int, family: int, block: bytes, *, version: int = 2, transport: int = 1) -> bytes:
    return (
        V2_SIGNATURE + bytes([version << 4 | command, family << 4 | transport]) + struct.pack("!H", len(block)) + block
    )


def v2_inet(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    block = bytes(map(int, src.split("."))) + bytes(map(int, dst.split("."))) + struct.pack("!HH", sport, dport)
    return v2(1, 1, block + tlvs)


def feed_whole(data: bytes) -> tuple[ProxyHeader, bytes]:
    reader = ProxyHeaderReader()
    header = reader.receive_data(data)
    assert header is not None
    return header, reader.leftover


def feed_bytewise(data: bytes) -> tuple[ProxyHeader, bytes]:
    """Feed one byte at a time; the header must complete exactly at its last byte, the rest is leftover."""
    reader = ProxyHeaderReader()
    for index in range(len(data)):
        header = reader.receive_data(data[index : index + 1])
        if header is not None:
            assert index + 1 == header.length
            return header, reader.leftover + data[index + 1 :]
    raise AssertionError("the header never completed")


FEEDERS = [feed_whole, feed_bytewise]

VALID = [
    (
        b"PROXY TCP4 10.231.0.21 10.231.0.10 40022 8888\r\n",
        ProxyHeader(1, ProxyCommand.PROXY, ("10.231.0.21", 40022), ("10.231.0.10", 8888), length=47),
    ),
    (
        b"PROXY TCP6 2001:db8::1 2001:0db8:0:0::2 65535 0\r\n",
        ProxyHeader(1, ProxyCommand.PROXY, ("2001:db8::1", 65535), ("2001:db8::2", 0), length=49),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, ProxyCommand.PROXY, None, None, length=15)),
    (
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        ProxyHeader(1, ProxyCommand.PROXY, None, None, length=35),
    ),
    (
        v2_inet("10.231.0.21", "10.231.0.10", 40022, 8888),
        ProxyHeader(2, ProxyCommand.PROXY, ("10.231.0.21", 40022), ("10.231.0.10", 8888), length=28),
    ),
    (
        v2(1, 2, bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 1234, 80)),
        ProxyHeader(2, ProxyCommand.PROXY, ("::1", 1234), ("::2", 80), length=52),
    ),
    (
        v2(1, 3, b"/run/client.sock".ljust(108, b"\0") + b"/run/server.sock".ljust(108, b"\0")),
        ProxyHeader(2, ProxyCommand.PROXY, ("/run/client.sock", 0), ("/run/server.sock", 0), length=232),
    ),
    # LOCAL (HAProxy's health checks): no addresses, even if an address block is present.
    (v2(0, 0, b"", transport=0), ProxyHeader(2, ProxyCommand.LOCAL, None, None, length=16)),
    (v2(0, 1, bytes(12)), ProxyHeader(2, ProxyCommand.LOCAL, None, None, length=28)),
    # PROXY with AF_UNSPEC: the sender does not know the addresses.
    (v2(1, 0, b"", transport=0), ProxyHeader(2, ProxyCommand.PROXY, None, None, length=16)),
    (
        v2_inet("192.0.2.1", "192.0.2.2", 1, 2, tlvs=b"\x04\x00\x00" + b"\x05\x00\x03abc"),
        ProxyHeader(2, ProxyCommand.PROXY, ("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=((4, b""), (5, b"abc")), length=37),
    ),
]


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize(("wire", "expected"), VALID)
def test_valid_headers_parse_whole_and_byte_by_byte_keeping_what_follows(feed, wire, expected) -> None:
    assert feed(wire + TRAILING) == (expected, TRAILING)
    assert feed(wire) == (expected, b"")


@pytest.mark.parametrize(("wire", "expected"), VALID)
def test_every_proper_prefix_asks_for_more(wire, expected) -> None:
    for end in range(len(wire)):
        assert parse_proxy_header(wire[:end]) is None
    assert parse_proxy_header(wire) == (expected, b"")


MALFORMED = [
    (b"30\n", "no PROXY protocol header"),  # a client that bypassed the load balancer
    (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
    (b"PROXI TCP4", "no PROXY protocol header"),
    (b"\r\n\r\n\x00\r\nQUIX\n", "no PROXY protocol header"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "malformed PROXY v1 header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed PROXY v1 header"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "malformed PROXY v1 header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare '\\n'"),
    (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "'1.2.3.400' is not a TCP4 address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "'::1' is not a TCP4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "'1.2.3.4' is not a TCP6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "'65536' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "'01' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "'-2' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n", "not ASCII"),
    (v2(1, 1, bytes(12), version=1), "version 1"),
    (v2(2, 1, bytes(12)), "unknown command 0x2"),
    (v2(1, 4, bytes(12)), "unknown address family 0x4"),
    (v2(1, 1, bytes(12), transport=3), "unknown transport 0x3"),
    (v2(1, 1, bytes(11)), "11-byte address block (needs 12)"),
    (v2(1, 2, bytes(35)), "35-byte address block (needs 36)"),
    (v2(1, 3, bytes(215)), "215-byte address block (needs 216)"),
    (v2(1, 1, bytes(12) + b"\x04\x00"), "truncated TLV"),
    (v2(1, 1, bytes(12) + b"\x04\x00\x05abc"), "announces 5 bytes"),
]


@pytest.mark.parametrize(("wire", "message"), MALFORMED)
def test_malformed_headers_are_the_peers_fault_with_a_clear_reason(wire, message) -> None:
    with pytest.raises(InvalidProxyHeader) as whole:
        ProxyHeaderReader().receive_data(wire + TRAILING)
    assert message in whole.value.reason
    # Byte by byte it fails too, no later than at the header's last byte (never waits for bytes it cannot use).
    reader = ProxyHeaderReader()
    with pytest.raises(InvalidProxyHeader) as bytewise:
        for index in range(len(wire)):
            assert reader.receive_data(wire[index : index + 1]) is None
    assert message in bytewise.value.reason


def test_a_stranger_is_refused_at_its_first_byte() -> None:
    with pytest.raises(InvalidProxyHeader, match="starts with b'3'"):
        ProxyHeaderReader().receive_data(b"3")


def test_v1_longer_than_107_bytes_is_refused_without_waiting_for_the_end() -> None:
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n"
    assert len(longest) == V1_MAX_LENGTH and feed_whole(longest)[0].length == V1_MAX_LENGTH
    too_long = b"PROXY UNKNOWN " + b"x" * 200
    reader = ProxyHeaderReader()
    fed = 0
    with pytest.raises(InvalidProxyHeader, match="longer than 107 bytes"):
        for index in range(len(too_long)):
            fed += 1
            reader.receive_data(too_long[index : index + 1])
    assert fed == V1_MAX_LENGTH


def test_v2_past_the_cap_is_refused_from_its_length_field_alone() -> None:
    oversized = v2(1, 1, bytes(DEFAULT_MAX_HEADER - 16 + 1))
    with pytest.raises(InvalidProxyHeader, match=f"{DEFAULT_MAX_HEADER + 1} bytes, longer than the 4096-byte cap"):
        ProxyHeaderReader().receive_data(oversized[:16])
    exactly = v2(1, 1, bytes(DEFAULT_MAX_HEADER - 16))
    assert feed_whole(exactly)[0].length == DEFAULT_MAX_HEADER
    small = ProxyHeaderReader(max_length=64)
    with pytest.raises(InvalidProxyHeader, match="longer than the 64-byte cap"):
        small.receive_data(v2(1, 1, bytes(49)))


def test_end_of_input_before_a_complete_header_is_the_peers_fault() -> None:
    reader = ProxyHeaderReader()
    with pytest.raises(InvalidProxyHeader, match="closed before sending anything"):
        reader.receive_data(b"")
    reader = ProxyHeaderReader()
    assert reader.receive_data(b"PROXY TCP4 1.2") is None
    with pytest.raises(InvalidProxyHeader, match="closed after 14 bytes"):
        reader.receive_data(b"")


def test_feeding_a_finished_reader_is_the_callers_fault() -> None:
    reader = ProxyHeaderReader()
    assert reader.receive_data(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(ProxyReaderMisuse):
        reader.receive_data(b"more")
    ended = ProxyHeaderReader()
    with pytest.raises(InvalidProxyHeader):
        ended.receive_data(b"")
    with pytest.raises(ProxyReaderMisuse):
        ended.receive_data(b"PROXY")
    with pytest.raises(ValueError, match="at least 16"):
        ProxyHeaderReader(max_length=15)
