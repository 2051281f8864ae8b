"""Chat served by the gevent server, over loopback (port 0, in-process servers, gevent sockets): exact lines."""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import gevent
import gevent.socket
import pytest
from gevent.socket import create_connection

from geventchat.chat import LocalRooms
from geventchat.client import ChatClient
from geventchat.config import ChatConfig, ServerConfig
from geventchat.protocol import Reply
from geventchat.server import ChatServer
from geventchat.server.chat import ChatMember
from geventchat.stats import ServerStats
from geventchat.testing import ServerProcess, wait_until

if TYPE_CHECKING:
    from geventchat.server.connection import Connection

PREFIX = "我收到了你的信息:"
StartServer = Callable[..., ChatServer]


class NoLine(Exception):
    """The server sent no complete line in time (the server's fault, or the test's expectation)."""


class Peer:
    """A line client on a gevent socket that reads whole lines under a timeout."""

    def __init__(self, address: tuple[str, int], timeout_line: bytes = b"30\n", rcvbuf: int = 0) -> None:
        if rcvbuf:  # set before connecting: the window the client offers follows it from the handshake on
            self.sock = gevent.socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.connect(address)
        else:
            self.sock = create_connection(address)
        self._buffer = b""
        self._lines: list[bytes] = []  # complete lines received and not yet read (no quadratic re-splitting)
        self.greeting = self.line()
        if timeout_line:
            self.sock.sendall(timeout_line)

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def line(self, timeout: float = 5.0) -> str:
        with gevent.Timeout(timeout, NoLine):
            while not self._lines:  # bounded by the Timeout
                data = self.sock.recv(65536)
                if not data:
                    raise NoLine(f"closed; unfinished: {self._buffer!r}")
                *complete, self._buffer = (self._buffer + data).split(b"\n")
                self._lines.extend(reversed(complete))
        return self._lines.pop().decode()

    def command(self, text: str) -> str:
        """Send ``text``; assert its echo comes first; return the line after it."""
        self.send(text)
        assert self.line() == PREFIX + text
        return self.line()

    def say(self, text: str) -> None:
        """Send a plain line and read its echo."""
        self.send(text)
        assert self.line() == PREFIX + text

    def silent(self, seconds: float = 0.2) -> bool:
        """True if nothing arrives within ``seconds`` (used only to assert an absence, never to wait)."""
        try:
            self.line(seconds)
        except NoLine:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(server: ChatServer, timeout_line: bytes = b"30\n", rcvbuf: int = 0) -> Peer:
        peer = Peer(server.address, timeout_line, rcvbuf)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def named(make: Callable[..., Peer], server: ChatServer, *nicks: str, room: str | None = None) -> list[Peer]:
    result: list[Peer] = []
    for index, nick in enumerate(nicks):
        peer = make(server)
        assert peer.command(f":nick {nick}") == f"ok: you are {nick}"
        if room is not None:
            assert peer.command(f":join {room}") == f"ok: joined #{room} ({index + 1} member{'s' * (index > 0)})"
            for earlier in result:
                assert earlier.line() == f"info: {nick} joined #{room}"
        result.append(peer)
    return result


def test_commands_across_clients_with_exact_lines(start_server: StartServer, peers: Callable[..., Peer]) -> None:
    server = start_server()
    alice, bob, carol = named(peers, server, "alice", "bob", "carol", room="lobby")
    assert alice.command(":who") == "ok: #lobby 3: alice bob carol"
    dave = peers(server)
    assert dave.command(":nick dave") == "ok: you are dave"
    assert dave.command(":join #kitchen") == "ok: joined #kitchen (1 member)"
    assert alice.command(":rooms") == "ok: 2 rooms: #lobby (3), #kitchen (1)"
    assert bob.command(":nick bobby") == "ok: you are bobby"
    assert alice.line() == "info: bob is now bobby" and carol.line() == "info: bob is now bobby"
    alice.say("hello all")
    assert bob.line() == "#lobby alice: hello all" and carol.line() == "#lobby alice: hello all"
    assert dave.silent()  # another room hears nothing
    assert carol.command(":msg dave psst") == "ok: sent to dave"
    assert dave.line() == "@carol: psst"
    assert carol.command(":msg nobody hi") == "error: no such nick nobody"
    assert carol.command(":leave") == "ok: left #lobby"
    assert alice.line() == "info: carol left #lobby" and bob.line() == "info: carol left #lobby"
    assert carol.command(":leave") == "error: not in a room"
    assert dave.command(":nick ALICE") == "error: nick ALICE is taken"
    assert dave.command(":nick bad name!") == "error: invalid nick"
    assert dave.command(":help").startswith("ok: commands: :nick NAME, :join ROOM")
    assert server.stats.deliveries > 0


def test_a_command_answer_follows_its_own_echo_in_a_pipelined_chunk(
    start_server: StartServer, peers: Callable[..., Peer]
) -> None:
    server = start_server()
    peer = peers(server)
    peer.sock.sendall(b"one\n:nick zed\ntwo\n:who\n")
    got = [peer.line() for _ in range(6)]
    assert got == [
        PREFIX + "one",
        PREFIX + ":nick zed",
        "ok: you are zed",
        PREFIX + "two",
        PREFIX + ":who",
        "error: not in a room",
    ]


def test_smiley_and_unknown_words_stay_messages(start_server: StartServer, peers: Callable[..., Peer]) -> None:
    server = start_server()
    (alice, bob) = named(peers, server, "alice", "bob", room="r")
    alice.say(":)")
    assert bob.line() == "#r alice: :)"
    alice.say(":nickname")
    assert bob.line() == "#r alice: :nickname"
    outside = peers(server)
    outside.say(":)")
    assert outside.silent()


def test_chinese_nick_and_room(start_server: StartServer, peers: Callable[..., Peer]) -> None:
    server = start_server()
    ming, hong = named(peers, server, "小明", "小红", room="聊天室")
    ming.say("你好")
    assert hong.line() == "#聊天室 小明: 你好"
    assert hong.command(":who") == "ok: #聊天室 2: 小明 小红"


def test_raw_client_is_echo_only(start_server: StartServer) -> None:
    server = start_server()
    with gevent.Timeout(5):
        sock = create_connection(server.address)
        sock.recv(1024)  # the greeting
        sock.sendall(b"30:join x")  # no newline: an unframed client after the detection window
        reply = sock.recv(1024)
    sock.close()
    assert reply == (PREFIX + ":join x").encode()
    assert server.rooms is not None and server.rooms.room_count == 0  # type: ignore[attr-defined]


def test_chat_off_makes_commands_plain_messages(start_server: StartServer, peers: Callable[..., Peer]) -> None:
    server = start_server(chat=ChatConfig(enabled=False))
    peer = peers(server)
    peer.say(":join x")
    assert server.rooms is None
    assert peer.silent()


def test_rate_limit_past_room_rate(start_server: StartServer, peers: Callable[..., Peer]) -> None:
    server = start_server(chat=ChatConfig(room_rate=1.0))  # burst 2
    alice, bob = named(peers, server, "alice", "bob", room="r")
    alice.sock.sendall(b"m1\nm2\nm3\n")
    assert [alice.line() for _ in range(4)] == [
        PREFIX + "m1",
        PREFIX + "m2",
        PREFIX + "m3",
        "error: too fast, not delivered",
    ]
    assert [bob.line(), bob.line()] == ["#r alice: m1", "#r alice: m2"]
    assert bob.silent()


def test_a_line_too_long_to_relay_is_refused_and_breaks_no_client_of_ours(
    start_server: StartServer, peers: Callable[..., Peer]
) -> None:
    # 60,000 control characters: a line the server accepts (under --max-line, 65,536) and echoes byte for byte,
    # but relayed escaped it would be 240,000 bytes, past what ChatClient (sized for an echo) reads.
    server = start_server(chat=ChatConfig(room_rate=0))
    (sender,) = named(peers, server, "sender", room="r")
    with ChatClient.connect(*server.address, idle_timeout=30) as receiver:
        for command, answer in [(":nick ann", "ok: you are ann"), (":join r", "ok: joined #r (2 members)")]:
            receiver.request(command)
            assert receiver.receive() == Reply(answer, answer)
        assert sender.line() == "info: ann joined #r"
        text = "\x01" * 60_000
        refusal = "error: too long to relay, not delivered (limit 65536 bytes)"
        assert sender.command(text) == refusal  # its echo (checked, byte-exact), then why it went to no one
        assert sender.command(f":msg ann {text}") == refusal
        sender.say("after")
        assert receiver.receive() == Reply("#r sender: after", "#r sender: after")  # nothing came before it
        assert receiver.request("still reading").message == "still reading"


def test_max_rooms(start_server: StartServer, peers: Callable[..., Peer]) -> None:
    server = start_server(chat=ChatConfig(max_rooms=1))
    first, second = peers(server), peers(server)
    assert first.command(":join a") == "ok: joined #a (1 member)"
    assert second.command(":join b") == "error: too many rooms"
    assert second.command(":join A").startswith("ok: joined #a (2 members)")


def test_leave_notices_say_why_quit_and_idle_timeout(start_server: StartServer, peers: Callable[..., Peer]) -> None:
    server = start_server()
    stays, quits = named(peers, server, "stays", "quits", room="r")
    quits.say(":q")  # its echo, then the server closes
    with pytest.raises(NoLine, match="closed"):
        quits.line()
    assert stays.line() == "info: quits left #r (quit)"
    sleepy = peers(server, timeout_line=b"0.5\n")
    assert sleepy.command(":nick sleepy") == "ok: you are sleepy"
    assert sleepy.command(":join r") == "ok: joined #r (2 members)"
    assert stays.line() == "info: sleepy joined #r"
    assert sleepy.line(5) == "bye: idle timeout (0.5s)"
    assert stays.line(5) == "info: sleepy left #r (idle timeout)"


def test_shutdown_parts_members(start_server: StartServer, peers: Callable[..., Peer]) -> None:
    server = start_server(grace=5)
    a, b = named(peers, server, "a", "b", room="r")
    stopping = gevent.spawn(server.shutdown)
    assert a.line() == "bye: server shutting down"
    lines = [b.line()]
    if lines[0].startswith("info:"):
        lines.append(b.line())
    assert "bye: server shutting down" in lines
    a.close()
    b.close()
    stopping.join(10)
    assert stopping.dead


def test_slow_member_is_cut_others_go_on(start_server: StartServer, peers: Callable[..., Peer]) -> None:
    queue = 64 * 1024
    server = start_server(chat=ChatConfig(send_queue=queue, room_rate=0), linger=10.0)
    talker, reader, slow = named(peers, server, "talker", "reader", "slow", room="r")
    # No SO_RCVBUF tuning: a tiny receive window makes the kernel trickle data by persist-timer probes.
    text = "x" * 10_000
    sent = 0
    overflowed = False
    for sent in range(1, 5_000):  # bounded: the kernel buffers and the queue hold far less than this
        talker.say(f"{sent} {text}")
        assert reader.line() == f"#r talker: {sent} {text}"
        # The server holds at most the cap for any member, however much the room says.
        assert all(c.member is None or c.member.outbox.pending_bytes <= queue for c in server._connections)
        if server.stats.chat_overflows:
            overflowed = True
            break
    assert overflowed, "the slow member's queue never overflowed"
    assert reader.line() == "info: slow left #r (too slow)"
    assert talker.line() == "info: slow left #r (too slow)"
    talker.say("still here")
    assert reader.line() == "#r talker: still here"
    # The server held at most the queue for it (plus socket buffers), not everything the room said.
    assert sent * len(text) > 2 * queue
    # Now read everything the slow member got: whole lines, the last one the bye.
    got = []
    for _ in range(sent + 10):  # bounded: it got at most one line per message, then the bye
        line = slow.line(10)
        got.append(line)
        if line.startswith("bye:"):
            break
    assert got[-1] == "bye: too slow"
    pattern = re.compile(rf"#r talker: \d+ {text}")
    room_lines = [line for line in got[:-1] if line.startswith("#r")]
    assert room_lines and all(pattern.fullmatch(line) for line in room_lines)
    assert len(room_lines) < sent  # it was cut: it did not get everything
    slow.close()  # the server lingers until the client closes its side
    wait_until(lambda: server.stats.closed.get("too slow") == 1, what="the slow member to be closed")


def _blocked_in_its_own_write(connection: Any) -> bool:
    """True if the connection's greenlet is suspended inside ``Connection._write`` (sending its own replies, or
    waiting for the chat writer's lock): read from its frames, which is where the greenlet switched away."""
    frame = connection.greenlet.gr_frame
    while frame is not None:
        if frame.f_code.co_name == "_write" and frame.f_code.co_filename.endswith("connection.py"):
            return True
        frame = frame.f_back
    return False


def test_a_slow_member_blocked_on_its_own_write_is_closed_when_its_queue_overflows(
    start_server: StartServer, peers: Callable[..., Peer]
) -> None:
    """A member that sends and never reads: its echo replies fill the socket, so its own greenlet blocks writing
    (and the chat writer waits for the lock). When the room overflows its queue it must be closed 'too slow' then,
    not at its idle timeout (an hour here), and the others go on."""
    queue = 64 * 1024
    server = start_server(chat=ChatConfig(send_queue=queue, room_rate=0), linger=1.0)
    talker, reader = named(peers, server, "talker", "reader", room="r")
    slow = peers(server, timeout_line=b"3600\n")
    assert slow.command(":nick slow") == "ok: you are slow"
    assert slow.command(":join r") == "ok: joined #r (3 members)"
    assert talker.line() == reader.line() == "info: slow joined #r"
    rooms = server.rooms
    assert isinstance(rooms, LocalRooms)
    (slow_connection,) = [c for c in server._connections if c.member is not None and rooms.nick_of(c.member) == "slow"]
    # Lines that get a long echo and relay nothing (an invalid nick): only the slow member's own socket fills.
    junk = ":nick " + "!" * 10_000

    def flood() -> None:
        for _ in range(100_000):  # bounded; it blocks long before, once the server stops reading
            slow.send(junk)

    flooder = gevent.spawn(flood)
    try:
        wait_until(lambda: _blocked_in_its_own_write(slow_connection), timeout=20, what="slow to block writing")
        sent = 0
        for sent in range(1, 1_000):  # bounded: 64 KiB of queue overflows after a few lines of 10 KB
            talker.say(f"{sent} " + "x" * 10_000)
            assert reader.line().startswith(f"#r talker: {sent} ")
            assert all(c.member is None or c.member.outbox.pending_bytes <= queue for c in server._connections)
            if server.stats.chat_overflows:
                break
        assert server.stats.chat_overflows == 1  # the situation: its queue overflowed while it was blocked
        assert _blocked_in_its_own_write(slow_connection) or slow_connection not in server._connections  # or gone
        assert talker.line() == reader.line() == "info: slow left #r (too slow)"  # parted at once
        talker.say("still here")
        assert reader.line() == "#r talker: still here"
        # Closed 'too slow' now (within the linger for its last line), not at its idle timeout an hour away.
        wait_until(lambda: server.stats.closed.get("too slow") == 1, timeout=15, what="the slow member to be closed")
    finally:
        flooder.kill()
    assert slow_connection not in server._connections


def _record_calls(monkeypatch: pytest.MonkeyPatch, method: str) -> list[tuple[ChatMember, bool]]:
    """Spy on ``ChatMember.<method>``: every call's member, and whether the write lock had been taken for it."""
    calls: list[tuple[ChatMember, bool]] = []
    original = getattr(ChatMember, method)

    def recording(self: ChatMember) -> None:
        calls.append((self, self._lock_handed))
        original(self)

    monkeypatch.setattr(ChatMember, method, recording)
    return calls


def test_room_lines_go_out_from_the_hub_in_one_send_per_member_without_a_writer(
    start_server: StartServer, peers: Callable[..., Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(chat=ChatConfig(room_rate=0))
    talker, reader, other = named(peers, server, "talker", "reader", "other", room="r")
    writers = _record_calls(monkeypatch, "_write_queued")
    flushes = _record_calls(monkeypatch, "_flush")
    deliveries, bytes_out = server.stats.deliveries, server.stats.bytes_out
    texts = [f"line {n}" for n in range(20)]
    talker.sock.sendall(b"".join(text.encode() + b"\n" for text in texts))  # one chunk: the server reads it whole
    assert [talker.line() for _ in texts] == [PREFIX + text for text in texts]
    for peer in (reader, other):
        assert [peer.line() for _ in texts] == [f"#r talker: {text}" for text in texts]
    # The situation: the lines went out through the hub's flush, and no writer greenlet was spawned for them.
    receivers = {member for member, _handed in flushes}
    assert len(receivers) == 2 and writers == []
    # Batched: one chunk's twenty lines reach a member in fewer sends than lines (one, when read as one chunk).
    assert len(flushes) < 2 * len(texts)
    assert server.stats.deliveries - deliveries == 2 * len(texts)
    room_bytes = sum(len(f"#r talker: {text}\n") for text in texts)
    assert server.stats.bytes_out - bytes_out >= 2 * room_bytes  # counted once out (the echo replies too)


def test_a_line_the_socket_takes_in_part_is_finished_before_the_members_own_replies(
    start_server: StartServer, peers: Callable[..., Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member with small socket buffers that does not read for a while and sends commands meanwhile: a room line
    far larger than the buffers is cut by the hub's non-blocking send; its rest must go out before the member's own
    replies (which wait for the write lock), and every line it then reads is whole and in order."""
    size = 100_000
    server = start_server(max_line=4 * size, chat=ChatConfig(room_rate=0))
    (talker,) = named(peers, server, "talker", room="r")
    slow = peers(server, rcvbuf=4096)
    assert slow.command(":nick slow") == "ok: you are slow"
    assert slow.command(":join r") == "ok: joined #r (2 members)"
    assert talker.line() == "info: slow joined #r"
    rooms = server.rooms
    assert isinstance(rooms, LocalRooms)
    (connection,) = [c for c in server._connections if c.member is not None and rooms.nick_of(c.member) == "slow"]
    connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writers = _record_calls(monkeypatch, "_write_queued")
    texts = [f"{n} " + "abc"[n] * size for n in range(3)]
    talker.say(texts[0])
    # The situation: the send took part of the line, and a writer got the lock (taken for it) to finish it.
    wait_until(lambda: any(handed for _member, handed in writers), what="a writer to finish a cut line")
    for _ in range(5):
        slow.send(":who")
    wait_until(lambda: _blocked_in_its_own_write(connection), what="slow's replies to wait for the cut line")
    talker.say(texts[1])
    talker.say(texts[2])
    own = [PREFIX + ":who", "ok: #r 2: slow talker"] * 5
    room = [f"#r talker: {text}" for text in texts]
    got = [slow.line(10) for _ in range(len(own) + len(room))]
    assert got[0] == room[0]  # the cut line, whole, before any reply of its own
    assert [line for line in got if line.startswith("#r ")] == room
    assert [line for line in got if not line.startswith("#r ")] == own
    assert slow.silent()


class _FakeConnection:
    """What a :class:`ChatMember` uses of its connection, over one end of a socket pair."""

    def __init__(self, sock: Any, tls: object | None) -> None:
        self.sock = sock
        self.server = SimpleNamespace(config=ServerConfig(), stats=ServerStats(), tls=tls)
        self.in_room = False
        self.greenlet = gevent.getcurrent()

    def request_too_slow(self) -> None:
        raise AssertionError("not expected here")


@pytest.mark.parametrize("tls", [False, True])
def test_a_tls_member_keeps_the_writer_greenlet_a_plain_one_the_flush(tls: bool) -> None:
    near, far = gevent.socket.socketpair()
    try:
        member = ChatMember(cast("Connection", _FakeConnection(near, object() if tls else None)), LocalRooms())
        member.deliver(b"@a: hi\n")
        # The situation: TLS spawns a writer (its socket may need to read to write); plain TCP waits for the flush.
        assert (member._writer is not None) is tls
        assert member._flush_due is not tls
        with gevent.Timeout(5, NoLine):
            assert far.recv(100) == b"@a: hi\n"
        assert member._stats.deliveries == 1
        wait_until(lambda: member._stats.bytes_out == len(b"@a: hi\n"), what="the line counted as written")
    finally:
        near.close()
        far.close()


def test_stop_writing_before_the_writer_starts_returns_the_cut_lines_rest_and_frees_the_lock() -> None:
    near, far = gevent.socket.socketpair()
    try:
        member = ChatMember(cast("Connection", _FakeConnection(near, None)), LocalRooms())
        line = b"@a: " + b"x" * (1 << 19) + b"\n"  # far more than a socket pair's buffers, less than the queue
        member.deliver(line)
        gevent.sleep(0)  # the hub's turn: the flush sends part, takes the lock and spawns the writer
        writer = member._writer
        # The situation: part of the line went out and the writer that is to finish it has not run yet (it clears
        # _lock_handed first thing, taking the lock over).
        assert member._lock_handed and writer is not None
        assert member.write_lock.locked() and 0 < member._cut_at < len(line)
        cut_at = member._cut_at
        rest = member.stop_writing()
        assert writer.dead and rest == line[cut_at:]
        assert not member.write_lock.locked()
        member.deliver(b"@a: late\n")  # after stop_writing: dropped
        assert member.outbox.pending_bytes == 0 and not member._flush_due
    finally:
        near.close()
        far.close()


ROOMS_OFF = "error: rooms are off: --workers without --redis"


def test_workers_without_redis_turn_rooms_off(server_process: Callable[..., ServerProcess]) -> None:
    process = server_process("--workers", "2")
    process.wait_for(r"chat rooms are off: 2 workers without --redis")
    peer = Peer((process.host, process.port))
    try:
        assert peer.command(":join lobby") == ROOMS_OFF
        peer.say("plain")  # the echo alone
        assert peer.silent()
    finally:
        peer.close()
    assert sum("rooms are off" in line for line in process.stderr) == 1  # said once, by the supervisor


def test_a_worker_added_by_sigttin_states_no_stale_worker_count(server_process: Callable[..., ServerProcess]) -> None:
    process = server_process("--workers", "2", "--log-level", "DEBUG")
    process.wait_for(r"2 workers ready")
    mark = len(process.stderr)
    process.send_signal(signal.SIGTTIN)
    process.wait_for(r"SIGTTIN: adding worker 2 \(now 3 workers\)", start=mark)
    added = int(process.wait_for(r"worker 2 started \(pid (\d+)\)", start=mark).group(1))
    process.wait_for(rf"worker 2 \(pid {added}\) is listening", start=mark)
    peers: list[Peer] = []
    try:
        for _ in range(200):  # until one lands on the new worker (a miss in 200 has odds of (2/3)**200)
            peers.append(Peer((process.host, process.port)))
            port = peers[-1].sock.getsockname()[1]
            worker = process.wait_for(rf"geventchat\.server\[(\d+)\]: 127\.0\.0\.1:{port} connected").group(1)
            if int(worker) == added:
                break
        assert int(worker) == added  # the situation: this client is served by the worker SIGTTIN added
        # Three workers serve now; the answer must not state the start-up count of two.
        assert peers[-1].command(":join lobby") == ROOMS_OFF
    finally:
        for peer in peers:
            peer.close()


def test_a_member_whose_queue_overflows_in_its_own_turn_is_closed_before_its_blocked_write(
    start_server: StartServer, peers: Callable[..., Peer]
) -> None:
    """Its queue overflows while its own greenlet is busy (here: its ':msg' to itself), when no wait is there to
    interrupt; the write of its (long) echo that follows would block on a client that never reads. It must be
    closed 'too slow' then, not at its idle timeout an hour away."""
    server = start_server(max_line=64 << 20, chat=ChatConfig(send_queue=64 * 1024, room_rate=0), linger=1.0)
    slow = peers(server, timeout_line=b"3600\n")
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert slow.command(":nick slow") == "ok: you are slow"
    # Relayed to itself it is 16 MiB over a 64 KiB queue; its echo is as long and can never go out whole.
    slow.sock.sendall(b":msg slow " + b"x" * (16 << 20) + b"\n")
    wait_until(lambda: server.stats.chat_overflows == 1, timeout=30, what="the member's queue to overflow")
    wait_until(lambda: server.stats.closed.get("too slow") == 1, timeout=15, what="the member to be closed too slow")
    assert server.stats.closed.get("idle timeout") is None
