"""The proof's chat clients: ``python -m deploy.netns chat ADDRESS PORT ROOMS MEMBERS MESSAGES WATCH``, run on a
client host of the lab.

It opens ``ROOMS * MEMBERS`` connections one after the other (each through HAProxy, so ``leastconn`` spreads them
over the server hosts), names client ``i`` ``pc{i}``, puts clients ``r * MEMBERS`` up to ``(r + 1) * MEMBERS - 1``
in room ``proof{r}``, and once every client has joined, each sends ``MESSAGES`` lines ``m I K``. It reads until
every member has every other member's lines (or 20 s pass) and prints one JSON line ``{"event": "delivered", ...}``:
each client's local port (the server hosts log it, which tells the proof where each client landed) and every
``[sender, receiver]`` delivery. Then it keeps every connection open for ``WATCH`` seconds and prints a JSON line
per ``info: NICK left #ROOM (server lost)`` it reads, with the receiver and ``time.monotonic()`` (one clock for
every namespace of the machine, so the proof compares it with the moment it killed a host). Stdlib only,
single-threaded, every wait bounded.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import sys
import time
from collections.abc import Sequence

_ROOM_LINE = re.compile(r"^#proof\d+ pc(\d+): m (\d+) (\d+)$")
_LOST = re.compile(r"^info: (pc\d+) left #(proof\d+) \(server lost\)$")
#: Seconds allowed for connecting, joining, and the whole exchange of messages.
STEP_TIMEOUT = 20.0


class ChatFailed(Exception):
    """A server answered something the proof's client did not expect, or did not answer in time (ours to explain)."""


class Member:
    def __init__(self, index: int, room: int, sock: socket.socket) -> None:
        self.index = index
        self.room = room
        self.sock = sock
        self.buffer = b""
        self.open = True

    def lines(self) -> list[str]:
        """Complete lines read so far (the socket is non-blocking); marks the member closed at end of stream."""
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        if not chunk:
            self.open = False
            return []
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        return [line.decode(errors="replace") for line in complete]


def _read_line_blocking(sock: socket.socket, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        chunk = sock.recv(4096)
        if not chunk:
            raise ChatFailed("the server closed the connection during the handshake")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode(errors="replace")


def _connect(address: str, port: int, index: int, room: int) -> Member:
    sock = socket.create_connection((address, port), timeout=STEP_TIMEOUT)
    buffer = bytearray()
    _read_line_blocking(sock, buffer)  # the greeting
    # A long idle timeout: the connections stay quiet through the failover run that follows.
    sock.sendall(f"120\n:nick pc{index}\n:join proof{room}\n".encode())
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        line = _read_line_blocking(sock, buffer)
        if line.startswith(f"ok: joined #proof{room} "):
            break
        if line.startswith(("error: ", "bye: ")) or time.monotonic() > deadline:
            raise ChatFailed(f"client pc{index} could not join #proof{room}: {line!r}")
    member = Member(index, room, sock)
    member.buffer = bytes(buffer)
    sock.setblocking(False)
    return member


def _emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


def run(address: str, port: int, *, rooms: int, members: int, messages: int, watch: float) -> None:
    # Consecutive clients share a room: leastconn alternates them between the server hosts, so each room spans both.
    clients = [_connect(address, port, i, i // members) for i in range(rooms * members)]
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    for client in clients:
        client.sock.setblocking(True)
        client.sock.sendall(b"".join(f"m {client.index} {k}\n".encode() for k in range(messages)))
        client.sock.setblocking(False)
    expected = rooms * members * (members - 1) * messages
    deliveries: list[list[int]] = []
    deadline = time.monotonic() + STEP_TIMEOUT
    while len(deliveries) < expected and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            receiver: Member = key.data
            for line in receiver.lines():
                match = _ROOM_LINE.match(line)
                if match is not None:
                    deliveries.append([int(match.group(1)), receiver.index])
    _emit(
        {
            "event": "delivered",
            "clients": [{"index": c.index, "room": c.room, "port": c.sock.getsockname()[1]} for c in clients],
            "expected": expected,
            "deliveries": deliveries,
        }
    )
    deadline = time.monotonic() + watch
    while time.monotonic() < deadline and any(c.open for c in clients):
        for key, _ in selector.select(timeout=0.5):
            receiver = key.data
            for line in receiver.lines():
                lost = _LOST.match(line)
                if lost is not None:
                    _emit({"event": "lost", "receiver": receiver.index, "nick": lost.group(1), "at": time.monotonic()})
            if not receiver.open:
                selector.unregister(receiver.sock)
                _emit({"event": "closed", "client": receiver.index, "at": time.monotonic()})
    for client in clients:
        client.sock.close()
    _emit({"event": "done"})


def main(argv: Sequence[str]) -> int:
    address, port, rooms, members, messages, watch = argv
    try:
        run(address, int(port), rooms=int(rooms), members=int(members), messages=int(messages), watch=float(watch))
    except (ChatFailed, OSError) as exc:
        _emit({"event": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
