"""A DNS stand-in for Docker's embedded DNS: the lb namespace gets one at 127.0.0.11, as haproxy.cfg expects, and
it answers the ``server`` name with every server host's address (the replicas)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping, Sequence


def dns_answer(query: bytes, records: Mapping[str, Sequence[str]], ttl: int = 5) -> bytes | None:
    """A DNS response to ``query`` (one question): the A records of a known name, NOERROR with no answer for its
    other types, NXDOMAIN for unknown names. ``None`` for anything that is not a plain query."""
    if len(query) < 12:
        return None
    ident, flags, questions = struct.unpack_from("!HHH", query)
    if flags & 0x8000 or questions != 1:
        return None
    offset, labels = 12, []
    while True:
        if offset >= len(query):
            return None
        length = query[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0 or offset + length > len(query):
            return None
        labels.append(query[offset : offset + length])
        offset += length
    if offset + 4 > len(query):
        return None
    qtype, qclass = struct.unpack_from("!HH", query, offset)
    question = query[12 : offset + 4]
    name = b".".join(labels).decode("ascii", "replace").lower()
    addresses = records.get(name)
    answers = []
    if addresses is not None and qtype == 1 and qclass == 1:
        for address in addresses:
            answers.append(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + socket.inet_aton(address))
    rcode = 0 if addresses is not None else 3
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode  # response; opcode and RD copied; RA; rcode
    return struct.pack("!HHHHHH", ident, reply_flags, 1, len(answers), 0, 0) + question + b"".join(answers)


def serve_dns(bind: str, records: Mapping[str, Sequence[str]]) -> None:
    """Answer DNS queries on ``bind``:53/udp forever (runs inside the lb namespace, killed at teardown)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, 53))
    print(f"dns ready on {bind}:53: {dict(records)}", flush=True)
    while True:
        query, peer = sock.recvfrom(4096)
        reply = dns_answer(query, records)
        if reply is not None:
            sock.sendto(reply, peer)
