"""The chat state with fake members that record what they are delivered: LocalRooms, RoomsOff, Outbox. No sockets,
no gevent, no clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from geventchat.chat import LocalRooms, Member, Outbox, RoomService, RoomsOff, answer
from geventchat.protocol.chat import (
    HELP,
    INVALID_NICK,
    NOT_IN_A_ROOM,
    TOO_MANY_ROOMS,
    TOO_SLOW,
    parse_command,
)
from geventchat.protocol.errors import LocalProtocolError


class Fake:
    """A member that records every line delivered to it."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.on_deliver: Callable[[bytes], None] | None = None

    def deliver(self, line: bytes) -> None:
        self.got.append(line)
        if self.on_deliver is not None:
            self.on_deliver(line)

    def take(self) -> list[bytes]:
        got, self.got = self.got, []
        return got


def connect(rooms: LocalRooms, *nicks: str) -> list[Fake]:
    members = []
    for nick in nicks:
        member = Fake()
        rooms.connect(member)
        assert rooms.nick(member, nick) == f"ok: you are {nick}\n".encode()
        members.append(member)
    return members


def run(service: RoomService, member: Member, line: str) -> bytes:
    command = parse_command(line)
    assert command is not None, line
    return answer(service, member, command)


def test_local_rooms_satisfy_the_room_service_interface() -> None:
    services: list[RoomService] = [LocalRooms(), RoomsOff()]  # mypy checks the structural fit
    assert len(services) == 2


# -- nicks


def test_every_member_starts_with_a_unique_guest_nick() -> None:
    rooms = LocalRooms()
    members = [Fake() for _ in range(50)]
    nicks = [rooms.connect(member) for member in members]
    assert all(nick.startswith("guest-") for nick in nicks)
    assert len(set(nicks)) == 50
    assert rooms.nick_of(members[7]) == nicks[7]
    with pytest.raises(LocalProtocolError):
        rooms.connect(members[0])


def test_a_nick_is_taken_whatever_its_case_and_freed_when_its_member_goes() -> None:
    rooms = LocalRooms()
    bob, other = connect(rooms, "Bob", "guest")
    assert run(rooms, other, ":nick bob") == b"error: nick bob is taken\n"
    assert run(rooms, other, ":nick BOB") == b"error: nick BOB is taken\n"
    assert run(rooms, other, ":nick ｂｏｂ") == "error: nick ｂｏｂ is taken\n".encode()
    assert rooms.nick_of(other) == "guest"
    rooms.part(bob, "quit")
    assert run(rooms, other, ":nick bob") == b"ok: you are bob\n"
    assert rooms.nick_of(other) == "bob"


def test_chinese_nicks_and_rooms() -> None:
    rooms = LocalRooms()
    ming, hong = connect(rooms, "小明", "小红")
    assert run(rooms, ming, ":join #聊天室") == "ok: joined #聊天室 (1 member)\n".encode()
    assert run(rooms, hong, ":join 聊天室") == "ok: joined #聊天室 (2 members)\n".encode()
    assert ming.take() == ["info: 小红 joined #聊天室\n".encode()]
    assert rooms.say(hong, "你好") is None
    assert ming.take() == ["#聊天室 小红: 你好\n".encode()]
    assert run(rooms, ming, ":msg 小红 在吗") == "ok: sent to 小红\n".encode()
    assert hong.take() == ["@小明: 在吗\n".encode()]
    assert run(rooms, hong, ":who") == "ok: #聊天室 2: 小明 小红\n".encode()


def test_rename_is_announced_to_the_room_and_the_old_nick_is_free() -> None:
    rooms = LocalRooms()
    alice, carol, outsider = connect(rooms, "alice", "carol", "dave")
    run(rooms, alice, ":join r")
    run(rooms, carol, ":join r")
    alice.take()
    assert run(rooms, carol, ":nick Caroline") == b"ok: you are Caroline\n"
    assert alice.take() == [b"info: carol is now Caroline\n"]
    assert outsider.take() == []  # not in the room
    assert carol.take() == []  # the renamed member gets its ok: returned, not delivered
    assert run(rooms, outsider, ":nick carol") == b"ok: you are carol\n"
    assert run(rooms, carol, ":nick caroline") == b"ok: you are caroline\n"  # a change of case is a rename
    assert alice.take() == [b"info: Caroline is now caroline\n"]
    assert run(rooms, carol, ":nick caroline") == b"ok: you are caroline\n"  # no change: nothing announced
    assert alice.take() == []


def test_guest_names_are_reserved_but_a_guest_keeps_its_own() -> None:
    rooms = LocalRooms()
    member = Fake()
    guest = rooms.connect(member)
    other = connect(rooms, "bob")[0]
    assert run(rooms, other, f":nick {guest}") == INVALID_NICK
    assert run(rooms, other, ":nick guest-999") == INVALID_NICK
    assert run(rooms, member, f":nick {guest.upper()}") == f"ok: you are {guest.upper()}\n".encode()
    assert rooms.nick(other, "a b") == INVALID_NICK  # the service checks names too, not only the parser


# -- rooms


def test_join_announces_to_the_others_and_counts_the_joiner() -> None:
    rooms = LocalRooms()
    a, b, c = connect(rooms, "a", "b", "c")
    assert run(rooms, a, ":join Lobby") == b"ok: joined #Lobby (1 member)\n"
    assert run(rooms, b, ":join #lobby") == b"ok: joined #Lobby (2 members)\n"  # the room keeps its spelling
    assert run(rooms, c, ":join LOBBY") == b"ok: joined #Lobby (3 members)\n"
    assert a.take() == [b"info: b joined #Lobby\n", b"info: c joined #Lobby\n"]
    assert b.take() == [b"info: c joined #Lobby\n"]
    assert c.take() == []
    assert run(rooms, c, ":join lobby") == b"ok: joined #Lobby (3 members)\n"  # already there: no notices
    assert a.take() == b.take() == []


def test_joining_another_room_leaves_the_first_with_its_notice() -> None:
    rooms = LocalRooms()
    a, b, c = connect(rooms, "a", "b", "c")
    run(rooms, a, ":join one")
    run(rooms, b, ":join one")
    run(rooms, c, ":join two")
    a.take()
    assert run(rooms, b, ":join two") == b"ok: joined #two (2 members)\n"
    assert a.take() == [b"info: b left #one\n"]
    assert c.take() == [b"info: b joined #two\n"]
    assert b.take() == []
    assert rooms.room_of(b) == "two"
    assert run(rooms, a, ":who") == b"ok: #one 1: a\n"


def test_leave_and_not_in_a_room() -> None:
    rooms = LocalRooms()
    a, b = connect(rooms, "a", "b")
    assert run(rooms, a, ":leave") == NOT_IN_A_ROOM
    assert run(rooms, a, ":who") == NOT_IN_A_ROOM
    run(rooms, a, ":join r")
    run(rooms, b, ":join r")
    assert run(rooms, b, ":leave") == b"ok: left #r\n"
    assert a.take() == [b"info: b joined #r\n", b"info: b left #r\n"]
    assert rooms.room_of(b) is None
    assert run(rooms, a, ":leave") == b"ok: left #r\n"
    assert rooms.room_count == 0  # an empty room is gone
    assert run(rooms, a, ":rooms") == b"ok: 0 rooms\n"


def test_who_lists_100_sorted_then_counts_the_rest() -> None:
    rooms = LocalRooms()
    nicks = [f"m{i:03d}" for i in range(130)]
    members = connect(rooms, *reversed(nicks))
    for member in members:
        assert run(rooms, member, ":join big").startswith(b"ok: joined #big")
    line = run(rooms, members[0], ":who").decode()
    assert line.startswith("ok: #big 130: m000 m001 ")
    assert line.endswith(" m099 … and 30 more\n")
    listed = line.removeprefix("ok: #big 130: ").removesuffix(" … and 30 more\n").split(" ")
    assert listed == nicks[:100]


def test_rooms_lists_the_20_largest() -> None:
    rooms = LocalRooms()
    sizes = {f"r{i:02d}": (i % 5) + 1 for i in range(25)}
    asker = connect(rooms, "asker")[0]
    for room, size in sizes.items():
        for member in connect(rooms, *[f"{room}m{j}" for j in range(size)]):
            run(rooms, member, f":join {room}")
    line = run(rooms, asker, ":rooms").decode()
    assert line.startswith("ok: 25 rooms: #r04 (5), #r09 (5), #r14 (5), #r19 (5), #r24 (5), #r03 (4), ")
    assert line.count("#") == 20
    assert line.endswith("#r01 (2), #r06 (2), #r11 (2), #r16 (2), #r21 (2)\n")  # 5 each of sizes 5, 4, 3, 2


def test_max_rooms_refuses_a_new_room_but_not_an_existing_one() -> None:
    rooms = LocalRooms(max_rooms=2)
    a, b, c = connect(rooms, "a", "b", "c")
    run(rooms, a, ":join one")
    run(rooms, b, ":join two")
    assert run(rooms, c, ":join three") == TOO_MANY_ROOMS
    assert rooms.room_of(c) is None
    assert run(rooms, c, ":join one") == b"ok: joined #one (2 members)\n"
    a.take()
    assert run(rooms, a, ":join three") == TOO_MANY_ROOMS  # refused: a stays where it was, nobody is told
    assert rooms.room_of(a) == "one"
    assert c.take() == []
    assert run(rooms, b, ":join three") == b"ok: joined #three (1 member)\n"  # b alone in two: two closes
    assert rooms.room_count == 2


def test_private_messages() -> None:
    rooms = LocalRooms()
    alice, bob = connect(rooms, "alice", "Bob")
    assert run(rooms, alice, ":msg bob are you there?") == b"ok: sent to Bob\n"
    assert bob.take() == [b"@alice: are you there?\n"]
    assert alice.take() == []
    assert run(rooms, alice, ":msg carol hi") == b"error: no such nick carol\n"
    assert bob.take() == []
    rooms.part(bob, "quit")
    assert run(rooms, alice, ":msg Bob hi") == b"error: no such nick Bob\n"


def test_a_private_message_that_overflows_its_target_answers_the_sender() -> None:
    # The target's outbox overflows on this very line: the shell parts it inside deliver(). The sender still gets
    # its answer (a slow member never hurts anyone else), and the target is gone.
    rooms = LocalRooms()
    alice, bob = connect(rooms, "alice", "Bob")
    bob.on_deliver = lambda _line: rooms.part(bob, "too slow")
    assert run(rooms, alice, ":msg bob hi") == b"ok: sent to Bob\n"
    assert bob.take() == [b"@alice: hi\n"]  # it happened: delivered, then parted
    assert run(rooms, alice, ":msg bob again") == b"error: no such nick bob\n"


def test_relayed_text_is_escaped_for_the_others() -> None:
    rooms = LocalRooms()
    a, b = connect(rooms, "a", "b")
    run(rooms, a, ":join r")
    run(rooms, b, ":join r")
    a.take()
    rooms.say(b, "x\rinfo: c joined #r")
    run(rooms, b, ":msg a \x1b[2Jgotcha")
    assert a.take() == [b"#r b: x\\rinfo: c joined #r\n", b"@b: \\x1b[2Jgotcha\n"]


def test_part_announces_the_reason_and_frees_everything() -> None:
    rooms = LocalRooms()
    a, b = connect(rooms, "a", "b")
    run(rooms, a, ":join r")
    run(rooms, b, ":join r")
    a.take()
    for reason in ["idle timeout", "server lost"]:
        rooms.part(b, reason)
        assert a.take() == [f"info: b left #r ({reason})\n".encode()]
        b = Fake()
        rooms.connect(b)
        assert rooms.nick(b, "b") == b"ok: you are b\n"  # the nick was freed
        run(rooms, b, ":join r")
        a.take()
    rooms.part(a, "quit")
    rooms.part(a, "quit")  # twice is harmless
    assert b.take() == [b"info: a left #r (quit)\n"]
    assert rooms.member_count == 1
    with pytest.raises(LocalProtocolError):
        rooms.who(a)


def test_a_member_parted_during_a_fan_out_gets_no_more_of_it() -> None:
    rooms = LocalRooms()
    first, slow, last = connect(rooms, "first", "slow", "last")
    for member in (first, slow, last):
        run(rooms, member, ":join r")
    for member in (first, slow, last):
        member.take()
    # As the shell does when the outbox overflows: part the member from inside its deliver().
    slow.on_deliver = lambda _line: rooms.part(slow, "too slow")
    sender = connect(rooms, "sender")[0]
    run(rooms, sender, ":join r")
    assert slow.take() == [b"info: sender joined #r\n"]  # the delivery that parted it
    assert first.take() == [b"info: sender joined #r\n", b"info: slow left #r (too slow)\n"]
    assert last.take() == [b"info: slow left #r (too slow)\n", b"info: sender joined #r\n"]
    assert run(rooms, sender, ":who") == b"ok: #r 3: first last sender\n"


def test_help_and_usage_answers_need_no_room_service_state() -> None:
    rooms = LocalRooms()
    member = connect(rooms, "a")[0]
    assert run(rooms, member, ":help") == HELP
    assert run(rooms, member, ":msg a") == b"error: usage: :msg NICK TEXT\n"


def test_rooms_off_refuses_every_room_command_and_leaves_echo_alone() -> None:
    off = RoomsOff()
    member = Fake()
    assert off.connect(member).startswith("guest-")
    refusal = b"error: rooms are off: --workers without --redis\n"
    for line in [":nick bob", ":join r", ":leave", ":who", ":rooms", ":msg bob hi"]:
        assert run(off, member, line) == refusal, line
    assert run(off, member, ":help") == HELP
    assert off.say(member, "hello") is None
    off.part(member, "quit")
    assert member.got == []


# -- outbox


def test_outbox_takes_whole_lines_in_order() -> None:
    box = Outbox(limit=100)
    assert box.take() == b""
    assert box.put(b"one\n")
    assert box.put(b"two\n")
    assert box.pending_bytes == 8
    assert box.take() == b"one\ntwo\n"
    assert box.pending_bytes == 0
    assert box.take() == b""
    with pytest.raises(LocalProtocolError):
        box.put(b"no newline")
    with pytest.raises(LocalProtocolError):
        box.put(b"two\nlines\n")


def test_outbox_overflows_past_the_limit_not_at_it() -> None:
    box = Outbox(limit=10)
    assert box.put(b"12345\n")
    assert box.put(b"123\n")  # exactly 10 bytes: still fits
    assert box.pending_bytes == 10
    overflowed = [box.overflowed]
    assert not box.put(b"\n")  # 11: over
    overflowed.append(box.overflowed)
    assert overflowed == [False, True]
    assert box.pending_bytes == 0  # dropped: the member is going
    assert box.take() == b""
    assert not box.put(b"x\n")  # and stays refused
    assert TOO_SLOW == b"bye: too slow\n"


def test_outbox_as_a_member_bounds_a_reader_that_never_reads() -> None:
    class Queued:
        def __init__(self) -> None:
            self.box = Outbox(limit=1000)
            self.too_slow = False

        def deliver(self, line: bytes) -> None:
            if not self.box.put(line):
                self.too_slow = True

    rooms = LocalRooms()
    talker = connect(rooms, "talker")[0]
    sleeper = Queued()
    rooms.connect(sleeper)
    run(rooms, talker, ":join r")
    run(rooms, sleeper, ":join r")
    sent = 0
    while not sleeper.too_slow and sent < 1000:  # bounded: 1000 lines are far past 1000 bytes
        rooms.say(talker, "x" * 20)
        sent += 1
    assert sleeper.too_slow
    assert 20 < sent < 50  # each line is 31 bytes: the 33rd does not fit
    assert sleeper.box.pending_bytes == 0
    assert rooms.say(talker, "still talking") is None  # the talker is never held up
