"""RedisRooms against a real redis-server: the RoomService rules as a contract both LocalRooms and a pair of
RedisRooms "servers" on one Redis obey (members spread over the two servers), then what only Redis has: gevent
cooperation, fan-out once per server, presence sweep, broker loss and recovery."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import redis

from geventchat.chat import LocalRooms, Member, RoomService
from geventchat.chat._gevent_redis import GeventConnection, connection_pool
from geventchat.chat.redis_rooms import RedisRooms
from geventchat.protocol.chat import INVALID_NICK, NOT_IN_A_ROOM, ROOMS_UNAVAILABLE, TOO_MANY_ROOMS
from geventchat.testing import wait_until
from tests.redis_server import RedisServer, redis_server
from tests.test_chat_rooms import run

__all__ = ["redis_server"]  # the fixture, used by name


class Fake:
    """A member that records every line delivered to it; ``take()`` first lets every server catch up."""

    def __init__(self, settle: Any) -> None:
        self.got: list[bytes] = []
        self._settle = settle

    def deliver(self, line: bytes) -> None:
        self.got.append(line)

    def take(self) -> list[bytes]:
        self._settle()
        got, self.got = self.got, []
        return got


class Pair:
    """Two RedisRooms servers on one Redis, as one RoomService: members are connected to the servers in turn, each
    call goes to its member's server, and every call that changes something waits until both servers' listeners
    handled what it published (so cross-server deliveries arrive in call order, as in LocalRooms)."""

    def __init__(self, url: str, max_rooms: int, max_line: int = 65536) -> None:
        self.servers = [RedisRooms(url, server_id=f"s{i}", max_rooms=max_rooms, max_line=max_line) for i in (1, 2)]
        for server in self.servers:
            server.start(wait=10)
        self._home: dict[Member, RedisRooms] = {}

    def settle(self) -> None:
        for server in self.servers:
            server.barrier()

    def home(self, member: Member) -> RedisRooms:
        return self._home[member]

    def _settled(self, result: Any) -> Any:
        self.settle()
        return result

    def connect(self, member: Member) -> str:
        return self.connect_on(self.servers[len(self._home) % 2], member)

    def connect_on(self, server: RedisRooms, member: Member) -> str:
        self._home[member] = server
        return str(server.connect(member))

    def nick(self, member: Member, name: str) -> bytes:
        return bytes(self._settled(self.home(member).nick(member, name)))

    def join(self, member: Member, room: str) -> bytes:
        return bytes(self._settled(self.home(member).join(member, room)))

    def leave(self, member: Member) -> bytes:
        return bytes(self._settled(self.home(member).leave(member)))

    def who(self, member: Member) -> bytes:
        return self.home(member).who(member)

    def list_rooms(self, member: Member) -> bytes:
        return self.home(member).list_rooms(member)

    def message(self, member: Member, nick: str, text: str) -> bytes:
        return bytes(self._settled(self.home(member).message(member, nick, text)))

    def say(self, member: Member, text: str) -> bytes | None:
        result = self.home(member).say(member, text)
        self.settle()
        return result

    def part(self, member: Member, reason: str) -> None:
        self.home(member).part(member, reason)
        self.settle()

    def nick_of(self, member: Member) -> str:
        return self.home(member).nick_of(member)

    def room_of(self, member: Member) -> str | None:
        return self.home(member).room_of(member)

    @property
    def room_count(self) -> int:
        return self.servers[0].room_count

    def stop(self) -> None:
        for server in self.servers:
            server.kill()


class Rooms:
    """Builds the service under test (LocalRooms or a Pair) and its members."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self._tmp = tmp_path
        self.redis: RedisServer | None = None
        self.pairs: list[Pair] = []

    def make(self, max_rooms: int = 10_000, max_line: int = 65536) -> Any:
        if self.kind == "local":
            return LocalRooms(max_rooms=max_rooms, max_line=max_line)
        if self.redis is None:
            self.redis = RedisServer(self._tmp)
            self.redis.start()
        else:
            self.redis.stop()  # a fresh, empty Redis per service
            self.redis.start()
        pair = Pair(self.redis.url, max_rooms, max_line)
        self.pairs.append(pair)
        return pair

    def close(self) -> None:
        for pair in self.pairs:
            pair.stop()
        if self.redis is not None:
            self.redis.stop()


@pytest.fixture(params=["local", "redis"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rooms]:
    rooms = Rooms(request.param, tmp_path)
    yield rooms
    rooms.close()


def settle_of(service: Any) -> Any:
    return service.settle if isinstance(service, Pair) else (lambda: None)


def fake(service: Any) -> Fake:
    return Fake(settle_of(service))


def connect(service: Any, *nicks: str) -> list[Fake]:
    members = []
    for nick in nicks:
        member = fake(service)
        service.connect(member)
        assert service.nick(member, nick) == f"ok: you are {nick}\n".encode()
        members.append(member)
    return members


# -- the contract: LocalRooms and two RedisRooms servers on one Redis obey the same rules


def test_redis_rooms_satisfy_the_room_service_interface() -> None:
    services: list[type[RoomService]] = [RedisRooms]  # mypy checks the structural fit
    assert services


def test_guest_nicks_are_unique_across_servers(make: Rooms) -> None:
    service = make.make()
    members = [fake(service) for _ in range(20)]
    nicks = [service.connect(member) for member in members]
    assert all(nick.startswith("guest-") for nick in nicks)
    assert len(set(nicks)) == 20
    assert service.nick_of(members[7]) == nicks[7]


def test_a_nick_is_taken_whatever_its_case_and_server_and_freed_when_its_member_goes(make: Rooms) -> None:
    service = make.make()
    bob, other = connect(service, "Bob", "guest")  # on two servers when on Redis
    assert run(service, other, ":nick bob") == b"error: nick bob is taken\n"
    assert run(service, other, ":nick ｂｏｂ") == "error: nick ｂｏｂ is taken\n".encode()
    assert service.nick_of(other) == "guest"
    assert run(service, other, f":nick {service.connect(fake(service))}") == INVALID_NICK  # guest- is reserved
    service.part(bob, "quit")
    assert run(service, other, ":nick bob") == b"ok: you are bob\n"


def test_join_switch_leave_announcements_across_servers(make: Rooms) -> None:
    service = make.make()
    a, b, c = connect(service, "a", "b", "c")
    assert run(service, a, ":join Lobby") == b"ok: joined #Lobby (1 member)\n"
    assert run(service, a, ":join lobby") == b"ok: joined #Lobby (1 member)\n"  # alone, rejoining: same room
    assert run(service, b, ":join #lobby") == b"ok: joined #Lobby (2 members)\n"
    assert run(service, c, ":join LOBBY") == b"ok: joined #Lobby (3 members)\n"
    assert a.take() == [b"info: b joined #Lobby\n", b"info: c joined #Lobby\n"]
    assert b.take() == [b"info: c joined #Lobby\n"]
    assert c.take() == []
    assert run(service, c, ":join lobby") == b"ok: joined #Lobby (3 members)\n"  # already there: no notices
    assert run(service, b, ":join two") == b"ok: joined #two (1 member)\n"
    assert a.take() == c.take() == [b"info: b left #Lobby\n"]
    assert run(service, c, ":nick carol") == b"ok: you are carol\n"
    assert a.take() == [b"info: c is now carol\n"]
    assert b.take() == []  # not in that room any more
    assert run(service, a, ":leave") == b"ok: left #Lobby\n"
    assert c.take() == [b"info: a left #Lobby\n"]
    assert run(service, a, ":leave") == NOT_IN_A_ROOM
    assert service.room_of(b) == "two"


def test_say_reaches_every_other_member_of_the_room_only(make: Rooms) -> None:
    service = make.make()
    a, b, c, elsewhere, nowhere = connect(service, "a", "b", "c", "d", "e")
    for member in (a, b, c):
        run(service, member, ":join r")
    run(service, elsewhere, ":join s")
    for member in (a, b, c, elsewhere):
        member.take()
    assert service.say(b, "hi all") is None
    assert a.take() == c.take() == [b"#r b: hi all\n"]
    assert b.take() == []
    assert elsewhere.take() == nowhere.take() == []
    assert service.say(nowhere, "anyone?") is None  # not in a room: the echo alone
    assert a.take() == b.take() == c.take() == elsewhere.take() == []
    assert a.take() == b.take() == c.take() == []


def test_who_and_rooms_across_servers(make: Rooms) -> None:
    service = make.make()
    sizes = {f"r{i:02d}": (i % 5) + 1 for i in range(25)}
    asker = connect(service, "asker")[0]
    for room, size in sizes.items():
        for member in connect(service, *[f"{room}m{j}" for j in range(size)]):
            run(service, member, f":join {room}")
    line = run(service, asker, ":rooms").decode()
    assert line.startswith("ok: 25 rooms: #r04 (5), #r09 (5), #r14 (5), #r19 (5), #r24 (5), #r03 (4), ")
    assert line.count("#") == 20
    assert line.endswith("#r01 (2), #r06 (2), #r11 (2), #r16 (2), #r21 (2)\n")
    run(service, asker, ":join r04")
    assert run(service, asker, ":who") == b"ok: #r04 6: asker r04m0 r04m1 r04m2 r04m3 r04m4\n"


def test_private_messages_across_servers(make: Rooms) -> None:
    service = make.make()
    alice, bob = connect(service, "alice", "Bob")
    assert run(service, alice, ":msg bob are you there?") == b"ok: sent to Bob\n"
    assert bob.take() == [b"@alice: are you there?\n"]
    assert alice.take() == []
    assert run(service, alice, ":msg carol hi") == b"error: no such nick carol\n"
    service.part(bob, "quit")
    assert run(service, alice, ":msg Bob hi") == b"error: no such nick Bob\n"


def test_part_reasons_and_max_rooms(make: Rooms) -> None:
    service = make.make(max_rooms=2)
    a, b, c = connect(service, "a", "b", "c")
    run(service, a, ":join one")
    run(service, b, ":join two")
    assert run(service, c, ":join three") == TOO_MANY_ROOMS
    assert service.room_of(c) is None
    assert run(service, c, ":join one") == b"ok: joined #one (2 members)\n"
    assert a.take() == [b"info: c joined #one\n"]
    assert run(service, a, ":join three") == TOO_MANY_ROOMS  # refused: a stays, nobody is told
    assert c.take() == []
    assert run(service, b, ":join three") == b"ok: joined #three (1 member)\n"  # b alone in two: two closes
    assert service.room_count == 2
    service.part(c, "idle timeout")
    assert a.take() == [b"info: c left #one (idle timeout)\n"]
    service.part(c, "quit")  # twice is harmless
    assert a.take() == []


def test_a_line_too_long_to_relay_goes_to_no_one_and_its_sender_is_told(make: Rooms) -> None:
    service = make.make(max_line=30)
    a, b = connect(service, "a", "b")
    run(service, a, ":join r")
    run(service, b, ":join r")
    a.take()
    refusal = b"error: too long to relay, not delivered (limit 30 bytes)\n"
    # Escaping makes each control character 4 bytes: 5 of them fit ('#r a: ' + 20 = 26), 7 do not (34).
    assert service.say(a, "\x01" * 5) is None
    assert b.take() == [b"#r a: " + b"\\x01" * 5 + b"\n"]
    assert service.say(a, "\x01" * 7) == refusal
    assert run(service, a, ":msg b " + "\x01" * 7) == refusal  # '@a: ' + 28 = 32
    assert run(service, a, ":msg nobody " + "\x01" * 7) == refusal  # too long whoever it is for
    assert b.take() == []  # nothing of either reached anyone
    assert service.say(a, "x" * 24) is None  # exactly the limit: 30 bytes
    assert b.take() == [b"#r a: " + b"x" * 24 + b"\n"]


# -- what only Redis has


@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[Pair]:
    rooms = Pair(redis_server.url, 10_000)
    yield rooms
    rooms.stop()


def test_redis_waits_yield_to_the_hub(redis_server: RedisServer) -> None:
    """Each wait can end only by another greenlet's Redis call, made while the wait is blocked: a wait that held the
    hub would keep that greenlet from ever running, and would come back empty after its (failure-only) bound. No
    timing margin: on a loaded machine the greenlets just take longer."""
    bound = 30  # seconds; reached only if the wait blocks the hub (the test then fails)
    pool = connection_pool(redis_server.url, timeout=bound + 5)
    client = redis.Redis(connection_pool=pool)
    other = redis.Redis(connection_pool=connection_pool(redis_server.url, timeout=5))
    client.ping()  # connected beforehand: what follows waits for a reply, not for a connect
    sub = GeventConnection(**pool.connection_kwargs)
    sub.connect()
    sub.send_command("SUBSCRIBE", "quiet")
    assert sub.read_response()[0] == b"subscribe"
    seen_waiting: list[str] = []

    def unblock() -> None:
        # Runs only once both waits below have switched to the hub (they were spawned first and are not ready).
        if not blpop.ready() and not can_read.ready():
            seen_waiting.append("both")
        other.rpush("queue", b"pushed")
        other.publish("quiet", b"published")

    blpop = gevent.spawn(client.blpop, ["queue"], bound)
    can_read = gevent.spawn(sub.can_read, bound)
    unblocker = gevent.spawn(unblock)
    gevent.joinall([blpop, can_read, unblocker], timeout=bound + 10, raise_error=True)
    assert seen_waiting == ["both"]  # the situation: the other greenlet ran while both Redis calls were waiting
    assert blpop.value == (b"queue", b"pushed")  # ended by the push, not by its bound
    assert can_read.value is True  # ended by the publish
    assert sub.read_response()[2] == b"published"
    sub.disconnect()
    pool.disconnect()
    other.close()


def test_fan_out_is_one_subscription_per_server_and_room(pair: Pair, redis_server: RedisServer) -> None:
    members = connect(pair, *[f"m{i}" for i in range(6)])  # three on each server
    for member in members:
        run(pair, member, ":join r")
    probe = redis.Redis.from_url(redis_server.url)
    assert probe.pubsub_numsub("geventchat:room:r") == [(b"geventchat:room:r", 2)]
    for member in members[:4]:
        run(pair, member, ":leave")
    assert probe.pubsub_numsub("geventchat:room:r") == [(b"geventchat:room:r", 2)]  # one each left
    run(pair, members[4], ":leave")  # server 1's last member here
    assert probe.pubsub_numsub("geventchat:room:r") == [(b"geventchat:room:r", 1)]
    for member in members:
        member.take()
    run(pair, members[0], ":join r")
    assert members[5].take() == [b"info: m0 joined #r\n"]
    probe.close()


def test_a_dead_server_members_are_announced_and_their_nicks_freed(redis_server: RedisServer) -> None:
    first = RedisRooms(redis_server.url, server_id="first", presence_ttl=1.0)
    second = RedisRooms(redis_server.url, server_id="second", presence_ttl=1.0)
    first.start(wait=10)
    second.start(wait=10)
    try:
        doomed, survivor = Fake(lambda: None), Fake(lambda: None)
        first.connect(doomed)
        second.connect(survivor)
        assert first.nick(doomed, "doomed") == b"ok: you are doomed\n"
        first.join(doomed, "r")
        second.join(survivor, "r")
        second.barrier()
        assert survivor.got == []
        first.kill()  # no parting: as a crash
        killed_at = gevent.get_hub().loop.now()
        wait_until(lambda: bool(survivor.got), timeout=5, what="the server-lost notice")
        # Announced between the TTL and 4/3 of it after the last heartbeat; 3 s leaves room for a loaded machine
        # while still failing a sweep that waits for anything but the heartbeat's expiry.
        assert gevent.get_hub().loop.now() - killed_at < 3.0
        assert survivor.got == [b"info: doomed left #r (server lost)\n"]
        assert second.who(survivor) == b"ok: #r 1: " + second.nick_of(survivor).encode() + b"\n"
        assert second.nick(survivor, "doomed") == b"ok: you are doomed\n"
    finally:
        first.kill()
        second.stop()


def test_broker_killed_and_restarted_under_a_running_room(
    pair: Pair, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "geventchat.chat")
    one, two = pair.servers
    alice, bob = connect(pair, "alice", "bob")  # alice on one, bob on two
    run(pair, alice, ":join r")
    run(pair, bob, ":join r")
    assert alice.take() == [b"info: bob joined #r\n"]
    redis_server.stop()
    wait_until(lambda: not one.available and not two.available, timeout=10, what="both servers to see the loss")
    for line in [":nick carol", ":join s", ":leave", ":who", ":rooms", ":msg bob hi"]:
        assert run(one, alice, line) == ROOMS_UNAVAILABLE, line
    assert one.say(alice, "lost?") == ROOMS_UNAVAILABLE
    redis_server.start()  # same port, empty
    wait_until(lambda: one.available and two.available, timeout=15, what="both servers to reconnect")
    pair.settle()
    assert two.say(bob, "back") is None
    pair.settle()
    assert alice.got == [b"#r bob: back\n"]
    assert run(one, alice, ":who") == b"ok: #r 2: alice bob\n"  # restored after the empty restart
    assert run(two, bob, ":nick alice") == b"error: nick alice is taken\n"
    lost = [r for r in caplog.records if "broker lost" in r.getMessage()]
    back = [r for r in caplog.records if "broker back" in r.getMessage()]
    assert len(lost) == 2 and len(back) == 2  # once per server each way
    assert all(record.exc_info is None for record in caplog.records)


def test_parts_during_an_outage_are_capped_then_reconciled(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis frozen (SIGSTOP: it keeps its data, unlike a restart) while members come and go: the ids kept for replay
    stay under the cap, the log says once that it was passed, and once Redis answers again its records hold exactly
    the members still connected."""
    caplog.set_level(logging.WARNING, "geventchat.chat")
    rooms = RedisRooms(redis_server.url, server_id="capped", presence_ttl=1.0, timeout=0.5)
    rooms.max_pending_parts = 3
    rooms.start(wait=10)
    probe = redis.Redis.from_url(redis_server.url)
    try:
        members = [Fake(lambda: None) for _ in range(10)]
        for index, member in enumerate(members):
            rooms.connect(member)
            assert rooms.nick(member, f"m{index}") == f"ok: you are m{index}\n".encode()
            rooms.join(member, "r")
        assert probe.scard("geventchat:s:capped") == 10
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: not rooms.available, timeout=10, what="the server to see the broker gone")
            for member in members[1:]:  # more than the cap
                rooms.part(member, "quit")
            assert len(rooms._pending_parts) <= 3  # memory bounded, whatever the churn
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        wait_until(lambda: rooms.available, timeout=15, what="the server to reconnect")
        (kept,) = probe.smembers("geventchat:s:capped")  # the situation: Redis still had all ten, now one
        assert isinstance(kept, bytes) and probe.hget(b"geventchat:m:" + kept, "nick") == b"m0"
        assert probe.hkeys("geventchat:nicks") == [b"m0"]  # the parted members' nicks are free
        assert probe.zscore("geventchat:rooms", "r") == 1
        assert rooms.who(members[0]) == b"ok: #r 1: m0\n"
        passed = [r for r in caplog.records if "parted while the redis broker was down" in r.getMessage()]
        assert len(passed) == 1  # said once, though six parts went past the cap
    finally:
        probe.close()
        rooms.stop()


def test_concurrent_joins_across_servers_announce_exactly_who_came_after(pair: Pair) -> None:
    """Many members join the same rooms at once, spread over two servers: each member that got ``ok: joined #ROOM
    (N members)`` hears ``info: NICK joined`` for exactly the members that joined after it (none of those counted in
    its N, none missed), and a line said once every join is answered reaches every other member. No timing margin:
    the joins run concurrently (their Redis round trips overlap), and the checks wait for both listeners."""
    rooms, per_room = 6, 16
    members: dict[str, tuple[Fake, RedisRooms, str]] = {}
    for index in range(rooms * per_room):
        nick, room = f"m{index}", f"r{index % rooms}"
        member = fake(pair)
        pair.connect(member)
        assert pair.nick(member, nick) == f"ok: you are {nick}\n".encode()
        members[nick] = (member, pair.home(member), room)
    joins = {nick: gevent.spawn(home.join, member, room) for nick, (member, home, room) in members.items()}
    gevent.joinall(list(joins.values()), timeout=60, raise_error=True)
    counts: dict[str, int] = {}
    for nick, (_, _, room) in members.items():
        reply = joins[nick].value
        assert isinstance(reply, bytes) and reply.startswith(f"ok: joined #{room} (".encode()), reply
        counts[nick] = int(reply.split(b"(")[1].split()[0])
    for room_index in range(rooms):  # the situation: every member joined, each with its own place in the order
        in_room = [nick for nick, (_, _, room) in members.items() if room == f"r{room_index}"]
        assert sorted(counts[nick] for nick in in_room) == list(range(1, per_room + 1))
    pair.settle()
    missing = extra = 0
    for nick, (member, _, room) in members.items():
        got = member.take()
        joined_after = {
            other for other, (_, _, there) in members.items() if there == room and counts[other] > counts[nick]
        }
        heard = {line.decode().split()[1] for line in got if line.endswith(f" joined #{room}\n".encode())}
        assert len(got) == len(heard)  # nothing but join notices, none twice
        missing += len(joined_after - heard)
        extra += len(heard - joined_after)
    assert (missing, extra) == (0, 0)
    for room_index in range(rooms):
        speaker = next(nick for nick, (_, _, room) in members.items() if room == f"r{room_index}")
        member, home, room = members[speaker]
        assert home.say(member, "after the joins") is None
    pair.settle()
    for nick, (member, _, room) in members.items():
        speaker = next(other for other, (_, _, there) in members.items() if there == room)
        expected = [] if nick == speaker else [f"#{room} {speaker}: after the joins\n".encode()]
        assert member.take() == expected, nick


def test_a_join_racing_the_last_leave_on_one_server_keeps_the_room_subscribed(
    pair: Pair, redis_server: RedisServer
) -> None:
    """On one server, a member joins a room while that server's last member in it leaves (both calls in flight at
    once, in turn each way): the server stays subscribed for the one still in the room, which hears a line said from
    the other server."""
    one, two = pair.servers
    first, second = fake(pair), fake(pair)
    members = [first, second]
    for index, member in enumerate(members):
        one.connect(member)
        assert one.nick(member, f"m{index}") == f"ok: you are m{index}\n".encode()
    speaker = Fake(pair.settle)
    two.connect(speaker)
    assert two.nick(speaker, "speaker") == b"ok: you are speaker\n"
    assert two.join(speaker, "r").startswith(b"ok: joined #r")
    assert one.join(first, "r") == b"ok: joined #r (2 members)\n"
    probe = redis.Redis.from_url(redis_server.url)
    try:
        rounds = 20
        inside, outside = first, second
        for round_ in range(rounds):
            leaving = gevent.spawn(one.leave, inside)
            joining = gevent.spawn(one.join, outside, "r")
            gevent.joinall([leaving, joining], timeout=30, raise_error=True)
            assert leaving.value == b"ok: left #r\n"
            assert joining.value == b"ok: joined #r (2 members)\n"  # the situation: one out, one in, at once
            pair.settle()
            assert probe.pubsub_numsub("geventchat:room:r") == [(b"geventchat:room:r", 2)], round_
            for member in (inside, outside, speaker):
                member.take()
            assert two.say(speaker, f"round {round_}") is None
            assert outside.take() == [f"#r speaker: round {round_}\n".encode()], round_
            assert inside.take() == [], round_
            inside, outside = outside, inside
    finally:
        probe.close()


class PartedOnDelivery(Fake):
    """A member whose first delivery overflows its queue: its server parts it (``too slow``) from inside the call
    that delivers, as ChatMember.deliver() does."""

    def __init__(self, settle: Any, service: RedisRooms) -> None:
        super().__init__(settle)
        self._service = service

    def deliver(self, line: bytes) -> None:
        super().deliver(line)
        self._service.part(self, "too slow")


def test_the_last_local_member_parted_by_a_join_notice_leaves_the_joiner_subscribed(
    pair: Pair, redis_server: RedisServer
) -> None:
    """The joiner's own notice makes its server's only other member in the room overflow and go: that part must not
    unsubscribe the room under the joiner, who then hears a line from the other server."""
    one, two = pair.servers
    slow = PartedOnDelivery(pair.settle, one)
    joiner = fake(pair)
    speaker = fake(pair)
    for service, member, nick in [(one, slow, "slow"), (one, joiner, "joiner"), (two, speaker, "speaker")]:
        pair.connect_on(service, member)
        assert pair.nick(member, nick) == f"ok: you are {nick}\n".encode()
    assert run(pair, speaker, ":join r") == b"ok: joined #r (1 member)\n"
    assert run(pair, slow, ":join r") == b"ok: joined #r (2 members)\n"
    assert run(pair, joiner, ":join r") == b"ok: joined #r (3 members)\n"
    assert slow.take() == [b"info: joiner joined #r\n"]  # the situation: slow was parted by that delivery
    assert speaker.take() == [
        b"info: slow joined #r\n",
        b"info: joiner joined #r\n",
        b"info: slow left #r (too slow)\n",
    ]
    probe = redis.Redis.from_url(redis_server.url)
    try:
        assert probe.pubsub_numsub("geventchat:room:r") == [(b"geventchat:room:r", 2)]
    finally:
        probe.close()
    assert pair.say(speaker, "still there?") is None
    assert joiner.take() == [b"info: slow left #r (too slow)\n", b"#r speaker: still there?\n"]


def test_concurrent_first_joins_on_one_server_send_one_subscribe(pair: Pair, redis_server: RedisServer) -> None:
    """Joins to a new room started together on one server (each waits on Redis, so all are in flight at once) share
    one SUBSCRIBE, counted by Redis itself."""
    one = pair.servers[0]
    members = [fake(pair) for _ in range(8)]
    for member in members:
        one.connect(member)
    probe = redis.Redis.from_url(redis_server.url)
    try:

        def subscribes() -> int:
            return int(probe.info("commandstats").get("cmdstat_subscribe", {}).get("calls", 0))

        before = subscribes()
        joins = [gevent.spawn(one.join, member, "fresh") for member in members]
        gevent.joinall(joins, timeout=30, raise_error=True)
        counts = sorted(int(join.value.split(b"(")[1].split()[0]) for join in joins)
        assert counts == list(range(1, len(members) + 1))  # the situation: all joined the new room
        assert subscribes() - before == 1
        assert probe.pubsub_numsub("geventchat:room:fresh") == [(b"geventchat:room:fresh", 1)]
    finally:
        probe.close()


@pytest.mark.parametrize("cap", [10, 1])
def test_a_part_during_the_replay_is_replayed_too(redis_server: RedisServer, cap: int) -> None:
    """The replay's PART calls yield; a member parted meanwhile is recorded in the same list. It must be parted too
    (not popped in place of the one just sent), and passing the cap meanwhile must hand over to the scan, not raise."""
    rooms = RedisRooms(redis_server.url, server_id="replay", presence_ttl=1.0, timeout=0.5)
    rooms.max_pending_parts = cap
    rooms.start(wait=10)
    try:
        real = rooms._scripts["PART"]
        sent: list[str] = []

        def part(*, keys: list[str], args: list[str | int]) -> Any:
            sent.append(str(args[2]))
            if len(sent) == 1:
                rooms._remember_part("c")  # as a member parting while this call waits on Redis
            return real(keys=keys, args=args)

        rooms._scripts["PART"] = part  # type: ignore[assignment]
        rooms._pending_parts.extend(["a", "b"])
        rooms._replay_parts()
        assert sent[:1] == ["b"]  # the situation: a part was recorded while the first PART was in flight
        if cap > 1:
            assert sorted(sent) == ["a", "b", "c"]  # each sent once, none lost
        else:
            assert sent == ["b"]  # past the cap the list was given up: the scan covers this server's ids
        assert rooms._pending_parts == [] and not rooms._parts_overflowed
    finally:
        rooms.stop()


def test_a_burst_of_commands_past_the_pool_waits_its_turn(redis_server: RedisServer) -> None:
    """More commands in flight at once than the pool has connections (a thousand members joining at once): they
    wait for a connection, cooperatively, instead of failing with redis-py's 'Too many connections' (which the
    room service took for a lost broker). Blocking pops hold their connections until the probe pushes."""
    pool = connection_pool(redis_server.url, timeout=10, limit=8)
    client = redis.Redis(connection_pool=pool)
    probe = redis.Redis.from_url(redis_server.url)
    try:
        burst = 150  # past redis-py's default cap of 100 as well as ours
        pops = [gevent.spawn(client.blpop, ["burst"], 10) for _ in range(burst)]
        wait_until(lambda: probe.info("clients")["blocked_clients"] == 8, timeout=10, what="8 pops to block")
        assert probe.info("clients")["connected_clients"] <= 8 + 1  # the situation: the pool is full, 142 wait
        probe.rpush("burst", *range(burst))
        gevent.joinall(pops, timeout=30, raise_error=True)
        assert all(pop.successful() and pop.value is not None for pop in pops)  # every one served, none failed
    finally:
        probe.close()
        pool.disconnect()


def test_a_server_accepts_clients_only_once_its_broker_answered(redis_server: RedisServer) -> None:
    """The listening line follows start(): a server on a broker that is slow to answer at start-up waits for it
    (briefly), so rooms work from the first client on instead of answering 'rooms unavailable'."""
    from geventchat.config import ChatConfig, ServerConfig
    from geventchat.server import ChatServer

    server = ChatServer(
        ServerConfig(host="127.0.0.1", port=0, stats_interval=0, chat=ChatConfig(redis=redis_server.url))
    )
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # it keeps the connection pending, unanswered
    try:
        starter = gevent.spawn(server.start)
        starter.join(timeout=1.0)
        assert not starter.ready()  # the situation: start() is waiting for the frozen broker
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    try:
        starter.join(timeout=10)
        assert starter.successful()
        assert isinstance(server.rooms, RedisRooms) and server.rooms.available  # from the first client on
    finally:
        server.stop()


@pytest.mark.parametrize("going", ["leave", "part"])
def test_leaving_right_after_a_join_drops_the_member_from_its_old_room_too(
    redis_server: RedisServer, going: str
) -> None:
    """A member stays in its old room on its server until its join notice comes back from Redis. Leaving (':join b'
    then ':leave' in one chunk) or going (':join b' then ':q') before that must drop it from the old room as well:
    it used to keep receiving the old room's lines, and a gone member stayed in it for good."""
    rooms = RedisRooms(redis_server.url, server_id="s1", max_rooms=100, max_line=65536)
    rooms.start(wait=10)
    try:
        other, member = Fake(rooms.barrier), Fake(rooms.barrier)
        for each in (other, member):
            rooms.connect(each)
            rooms.join(each, "a")
        rooms.barrier()
        # Hold the join notice back until the member has gone: the race made certain, not hoped for.
        held: list[tuple[str, str]] = []
        entered = rooms._entered
        rooms._entered = lambda member_id, key: held.append((member_id, key))  # type: ignore[method-assign]
        try:
            assert rooms.join(member, "b").startswith(b"ok: joined #b")
            seat = rooms._seats[member]
            assert seat.id in rooms._entering  # the situation: its join is still in flight
            if going == "leave":
                assert rooms.leave(member) == b"ok: left #b\n"
            else:
                rooms.part(member, "quit")
            rooms.barrier()  # its join notice has been read (and held) by now
        finally:
            rooms._entered = entered  # type: ignore[method-assign]
        for member_id, key in held:
            entered(member_id, key)  # the notice arrives after the leave, as it would
        assert rooms.say(other, "hello") is None
        assert not [line for line in member.take() if b"hello" in line]  # no line of its old room
        if going == "leave":
            rooms.part(member, "quit")
        assert list(rooms._local_rooms.get("a", {})) == [other]  # nobody gone is left behind in #a
    finally:
        rooms.stop()
