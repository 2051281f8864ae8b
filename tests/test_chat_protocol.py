"""Chat in the sans-IO core with bytes alone: command parsing, names, every chat line, the rate limiter."""

from __future__ import annotations

import pytest

from geventchat.protocol.chat import (
    HELP,
    INVALID_NICK,
    INVALID_ROOM,
    MAX_NAME,
    NOT_IN_A_ROOM,
    ROOMS_OFF,
    ROOMS_UNAVAILABLE,
    TOO_FAST,
    TOO_MANY_ROOMS,
    TOO_SLOW,
    Help,
    InvalidName,
    Join,
    Leave,
    ListRooms,
    Nick,
    PrivateMessage,
    RateLimiter,
    UsageError,
    Who,
    error_nick_taken,
    error_no_such_nick,
    guest_nick,
    info_joined,
    info_left,
    info_renamed,
    is_reserved,
    name_key,
    ok_joined,
    ok_left,
    ok_rooms,
    ok_sent,
    ok_who,
    ok_you_are,
    parse_command,
    private_line,
    relayable,
    room_line,
    too_long_to_relay,
    validate_name,
)
from geventchat.protocol.errors import LocalProtocolError

# -- parsing


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (":nick bob", Nick("bob")),
        (":nick 小明", Nick("小明")),
        (":nick\u3000小明", Nick("小明")),  # the ideographic space a Chinese input method types
        (":nick  bob  ", Nick("bob")),
        (":join lobby", Join("lobby")),
        (":join #lobby", Join("lobby")),
        (":join #聊天室", Join("聊天室")),
        (":leave", Leave()),
        (":who", Who()),
        (":rooms", ListRooms()),
        (":help", Help()),
        (":leave ", Leave()),
        (":msg bob hi", PrivateMessage("bob", "hi")),
        (":msg bob  hi  there ", PrivateMessage("bob", "hi  there ")),
        (":msg 小明 你好", PrivateMessage("小明", "你好")),
    ],
)
def test_commands_parse(line: str, command: object) -> None:
    assert parse_command(line) == command


@pytest.mark.parametrize(
    "line",
    [":)", ":nickname bob", ":joined", ":", ": nick bob", ":NICK bob", ":q", "nick bob", "hello", "", " :nick bob"],
)
def test_lines_that_are_not_commands_are_ordinary_messages(line: str) -> None:
    assert parse_command(line) is None


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        (":nick", ":nick NAME"),
        (":nick   ", ":nick NAME"),
        (":join", ":join ROOM"),
        (":msg", ":msg NICK TEXT"),
        (":msg bob", ":msg NICK TEXT"),
        (":msg bob   ", ":msg NICK TEXT"),
        (":who is there", ":who"),
        (":leave now", ":leave"),
        (":rooms all", ":rooms"),
        (":help me", ":help"),
    ],
)
def test_bad_arguments_get_the_commands_usage(line: str, usage: str) -> None:
    rejected = parse_command(line)
    assert rejected == UsageError(usage)
    assert isinstance(rejected, UsageError)
    assert rejected.line() == f"error: usage: {usage}\n".encode()


@pytest.mark.parametrize(
    ("line", "kind", "answer"),
    [
        (":nick a b", "nick", b"error: invalid nick\n"),
        (":nick " + "x" * 33, "nick", b"error: invalid nick\n"),
        (":nick bob!", "nick", b"error: invalid nick\n"),
        (":join #", "room", b"error: invalid room\n"),
        (":join ##a", "room", b"error: invalid room\n"),
        (":join a.b", "room", b"error: invalid room\n"),
        (":msg b@d hi", "nick", b"error: invalid nick\n"),
    ],
)
def test_invalid_names_are_refused_without_echoing_them(line: str, kind: str, answer: bytes) -> None:
    rejected = parse_command(line)
    assert rejected == InvalidName(kind)  # type: ignore[arg-type]
    assert isinstance(rejected, InvalidName)
    assert rejected.line() == answer
    assert answer in (INVALID_NICK, INVALID_ROOM)


# -- names


@pytest.mark.parametrize(
    "name", ["bob", "小明", "聊天室", "Zoë", "Дмитрий", "हिन्दी", "a", "x" * MAX_NAME, "r2-d2_", "-", "日本語2"]
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * (MAX_NAME + 1),
        "a b",
        "a\tb",
        "#room",
        "bob!",
        "a.b",
        "bob\x1b",
        "bob\u202e",  # right-to-left override: a format character, not a letter
        "bob𝟑",  # mathematical bold digit three: a decimal digit that is not ASCII
        "bob３",  # fullwidth three
        "٣٠",  # Arabic-Indic digits
        "\u0301a",  # a combining mark cannot come first
        "😀",
    ],
)
def test_invalid_names(name: str) -> None:
    assert validate_name(name) is None


def test_names_compare_case_insensitively_and_by_normal_form() -> None:
    assert name_key("Bob") == name_key("BOB") == name_key("bob")
    assert name_key("ｂｏｂ") == name_key("bob")  # fullwidth letters are the same name
    assert name_key("Zo\u00eb") == name_key("Zoe\u0308")  # precomposed and combining
    assert name_key("STRASSE") == name_key("straße")  # casefold, not lower
    assert name_key("小明") == "小明"
    assert name_key("bob") != name_key("bobby")


def test_guest_nicks_are_valid_and_reserved() -> None:
    assert guest_nick("42") == "guest-42"
    assert validate_name(guest_nick("42")) == "guest-42"
    assert is_reserved("guest-42")
    assert is_reserved("GUEST-x")
    assert not is_reserved("guest")
    assert not is_reserved("bob")
    with pytest.raises(LocalProtocolError):
        guest_nick("x" * MAX_NAME)
    with pytest.raises(LocalProtocolError):
        guest_nick("a b")


# -- every line the server sends


def test_every_chat_line_is_one_framed_line() -> None:
    lines = {
        ok_you_are("小明"): "ok: you are 小明",
        error_nick_taken("Bob"): "error: nick Bob is taken",
        INVALID_NICK: "error: invalid nick",
        INVALID_ROOM: "error: invalid room",
        ok_joined("聊天室", 3): "ok: joined #聊天室 (3 members)",
        ok_joined("r", 1): "ok: joined #r (1 member)",
        info_joined("bob", "r"): "info: bob joined #r",
        info_renamed("guest-1", "bob"): "info: guest-1 is now bob",
        ok_left("r"): "ok: left #r",
        info_left("bob", "r"): "info: bob left #r",
        info_left("bob", "r", "idle timeout"): "info: bob left #r (idle timeout)",
        info_left("bob", "r", "server lost"): "info: bob left #r (server lost)",
        NOT_IN_A_ROOM: "error: not in a room",
        ok_sent("bob"): "ok: sent to bob",
        error_no_such_nick("bob"): "error: no such nick bob",
        room_line("r", "bob", "hello 世界"): "#r bob: hello 世界",
        private_line("alice", "psst"): "@alice: psst",
        TOO_FAST: "error: too fast, not delivered",
        TOO_MANY_ROOMS: "error: too many rooms",
        ROOMS_OFF: "error: rooms are off: --workers without --redis",
        ROOMS_UNAVAILABLE: "error: rooms unavailable (broker unreachable)",
        TOO_SLOW: "bye: too slow",
        HELP: "ok: commands: :nick NAME, :join ROOM, :leave, :who, :rooms, :msg NICK TEXT, :help, :q",
    }
    assert len(lines) == 23  # the situation: no two formats collapsed into one key
    for line, text in lines.items():
        assert line == text.encode() + b"\n"


def test_who_is_sorted_by_key_and_lists_at_most_100() -> None:
    assert ok_who("r", ["carol", "Bob", "alice"]) == b"ok: #r 3: alice Bob carol\n"
    assert ok_who("r", ["me"]) == b"ok: #r 1: me\n"
    nicks = [f"n{i:03d}" for i in range(150)]
    line = ok_who("big", reversed(nicks))
    assert line.startswith(b"ok: #big 150: n000 n001 ")
    listed = line.decode().removeprefix("ok: #big 150: ").removesuffix(" … and 50 more\n").split(" ")
    assert listed == nicks[:100]
    assert ok_who("r", nicks[:100]).endswith(b"n099\n")  # exactly 100: nothing more to count


def test_rooms_lists_the_20_largest_ties_by_name() -> None:
    assert ok_rooms([]) == b"ok: 0 rooms\n"
    assert ok_rooms([("a", 2)]) == b"ok: 1 room: #a (2)\n"
    assert ok_rooms([("b", 1), ("a", 3), ("C", 1)]) == b"ok: 3 rooms: #a (3), #b (1), #C (1)\n"
    rooms = [(f"r{i:02d}", i % 7 + 1) for i in range(30)]
    line = ok_rooms(rooms).decode()
    assert line.startswith("ok: 30 rooms: ")
    listed = [item.split(" ")[0] for item in line.removeprefix("ok: 30 rooms: ").rstrip("\n").split(", ")]
    expected = [f"#{name}" for name, _ in sorted(rooms, key=lambda room: (-room[1], room[0]))[:20]]
    assert len(listed) == 20
    assert listed == expected


def test_peer_text_cannot_forge_a_line() -> None:
    forged = "hi\rinfo: alice left #r\x0bbye: x\x1b[2J\x85\u2028\u2029\x7f"
    line = room_line("r", "bob", forged)
    text = line.decode()
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert len(text.splitlines()) == 1  # no splitter of any kind sees a second line
    assert "\x1b" not in text
    assert text == "#r bob: hi\\rinfo: alice left #r\\x0bbye: x\\x1b[2J\\x85\\u2028\\u2029\\x7f\n"
    assert len(private_line("bob", forged).decode().splitlines()) == 1
    assert len(info_left("bob", "r", "x\ry").decode().splitlines()) == 1


def test_relayed_text_keeps_tabs_emoji_and_chinese() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # joined by zero-width joiners (format characters)
    for text in ["a\tb", family, "你好,世界", "back\\slash"]:
        assert relayable(text) == text
    assert room_line("r", "bob", family) == f"#r bob: {family}\n".encode()


def test_a_line_break_from_our_own_code_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        ok_you_are("a\nb")


# -- rate limiter


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(20)
    assert limiter.burst == 40
    allowed = [limiter.allow(100.0) for _ in range(41)]
    assert allowed == [True] * 40 + [False]
    # Times exact in binary, so the test checks the bucket and not float rounding.
    assert not limiter.allow(100.03125)  # 0.625 of a token refilled (20/s): not yet
    assert limiter.allow(100.0625)  # 1.25 tokens: one message, 0.25 left
    assert not limiter.allow(100.0625)
    assert [limiter.allow(200.0) for _ in range(41)] == [True] * 40 + [False]  # refilled to the burst, no more


def test_rate_limiter_zero_is_unlimited_and_time_going_back_refills_nothing() -> None:
    unlimited = RateLimiter(0)
    assert all(unlimited.allow(0.0) for _ in range(10_000))
    limiter = RateLimiter(1, burst=1)
    assert limiter.allow(10.0)
    assert not limiter.allow(5.0)
    assert not limiter.allow(10.5)
    assert limiter.allow(11.0)


def test_rate_limiter_burst_is_at_least_one_and_arguments_are_checked() -> None:
    slow = RateLimiter(0.25)
    assert slow.burst == 1
    assert slow.allow(0.0)
    assert not slow.allow(3.9)
    assert slow.allow(4.0)
    with pytest.raises(ValueError):
        RateLimiter(-1)
    with pytest.raises(ValueError):
        RateLimiter(5, burst=0.5)


def test_a_relayed_line_is_refused_past_the_limit_counting_its_head_and_escapes() -> None:
    refusal = b"error: too long to relay, not delivered (limit 20 bytes)\n"
    assert too_long_to_relay(room_line("r", "bob", "x" * 12), 20) is None  # '#r bob: ' + 12 = 20: at the limit
    assert too_long_to_relay(room_line("r", "bob", "x" * 13), 20) == refusal
    assert too_long_to_relay(room_line("r", "bob", "\x01" * 3), 20) is None  # 3 characters escaped to 12 bytes
    assert too_long_to_relay(room_line("r", "bob", "\x01" * 4), 20) == refusal  # 4 bytes of text, 24 relayed
    assert too_long_to_relay(private_line("bob", "x" * 14), 20) is None  # '@bob: ' + 14
    assert too_long_to_relay(private_line("bob", "x" * 15), 20) == refusal
    assert too_long_to_relay(room_line("r", "bob", "x" * 65528)) is None  # the default: the server's --max-line
    assert too_long_to_relay(room_line("r", "bob", "x" * 65529)) is not None
