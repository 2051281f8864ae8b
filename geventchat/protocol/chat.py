"""Chat in the protocol core: commands parsed from a received line, names, every chat line the server sends, and the
token bucket that limits what one client may send into rooms. Sans-IO like the rest of the package: no sockets, no
gevent, no clock (the caller passes ``now``).

Served by the gevent shell (:mod:`geventchat.server.chat`) to line-framed clients, one process in memory.

Decisions this module makes, each for a reason:

- Command words are exact and lower case, like ``:q``: every new command word turns lines that used to be plain
  messages into commands, so the set is small and nothing else (``:NICK``, ``:nickname``, ``:)``) changes meaning.
- A command that takes no argument refuses one (``:who is there`` is a usage error, not a silent ``:who``), so a
  message that happens to start with a command word is never half-obeyed.
- Names allow ASCII digits only. ``str.isdecimal`` accepts some 700 digits of 70 scripts, among them fullwidth
  ``３`` and mathematical ``𝟑`` that render as ``3``: ``bob3`` and ``bob𝟑`` would be two people who look the same.
  ``parse_timeout`` refuses other scripts' digits for the same reason.
- Names allow combining marks after the first character (Unicode categories Mn, Mc): Devanagari, Thai and many
  other scripts cannot spell a word with letters alone (``हिन्दी`` has two vowel signs and a virama, none of them
  ``isalpha``). Chinese needs nothing more: its characters are letters.
- Names compare by their NFKC case fold (:func:`name_key`, Unicode's rule for caseless identifiers), not by
  ``casefold`` alone: ``é`` precomposed and ``e`` + combining acute, or ``ｂｏｂ`` (fullwidth) and ``bob``, are the
  same name to a reader, so they are the same name here. The display form is kept as the member typed it.
- Names starting ``guest-`` are reserved for generated nicks (:func:`guest_nick`), so a generated nick can never
  collide with a chosen one and the generator needs no look-up; a guest may re-take its own nick.
- Peer text relayed to *other* clients (room and private messages) has its control characters and Unicode line and
  paragraph separators escaped (``\\r`` becomes the two characters ``\\r``, ESC becomes ``\\x1b``): the framing
  splits on LF only and keeps a lone CR (rule "Framing"), but a client that splits on any line break
  (``str.splitlines``, text-mode readers) would otherwise read ``hi\\rinfo: bob left #r`` as a forged second line,
  and a plain ``nc`` user's terminal would obey another user's escape sequences. TAB passes (it breaks nothing).
  Other format characters (zero-width joiner in emoji, bidi marks) pass unchanged. The escape is for display, not
  a round trip: a member who types a backslash is not escaped. The echo reply to the sender stays byte-exact.
- A relayed line (``#ROOM NICK: TEXT``, ``@NICK: TEXT``) is at most ``--max-line`` bytes without its newline, the
  limit on what a client may send (:func:`too_long_to_relay`). The head and the escaping make it longer than the
  text (an escaped control character takes 4 bytes for 1), and a client sized for the echo of its longest line
  (``--max-line`` plus the prefix: geventchat's own) would otherwise fail on a line another user made. Past it the
  message is relayed to no one and the sender is told why, after its echo: nothing is cut or dropped silently.
"""

from __future__ import annotations

import heapq
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..config import ProtocolConfig
from .errors import LocalProtocolError
from .text import BYE_PREFIX, ERROR_PREFIX, NEWLINE

__all__ = [
    "COMMANDS_HELP",
    "DEFAULT_RELAY_LIMIT",
    "GUEST_PREFIX",
    "HELP",
    "INFO_PREFIX",
    "INVALID_NICK",
    "INVALID_ROOM",
    "MAX_NAME",
    "NOT_IN_A_ROOM",
    "OK_PREFIX",
    "ROOMS_LISTED",
    "ROOMS_OFF",
    "ROOMS_UNAVAILABLE",
    "TOO_FAST",
    "TOO_MANY_ROOMS",
    "TOO_SLOW",
    "WHO_LISTED",
    "ChatCommand",
    "Help",
    "InvalidName",
    "Join",
    "Leave",
    "ListRooms",
    "Nick",
    "PrivateMessage",
    "RateLimiter",
    "Rejected",
    "UsageError",
    "Who",
    "error_nick_taken",
    "error_no_such_nick",
    "guest_nick",
    "info_joined",
    "info_left",
    "info_renamed",
    "is_reserved",
    "name_key",
    "ok_joined",
    "ok_left",
    "ok_rooms",
    "ok_sent",
    "ok_who",
    "ok_you_are",
    "parse_command",
    "private_line",
    "relayable",
    "room_line",
    "too_long_to_relay",
    "validate_name",
]

#: The result of the client's own command; comes right after that command's echo reply.
OK_PREFIX = "ok: "
#: A room event (someone joined, left, changed nick).
INFO_PREFIX = "info: "
#: Longest nick or room name, in characters.
MAX_NAME = 32
#: Most names a ``:who`` answer lists; the rest are counted (``… and K more``).
WHO_LISTED = 100
#: Most rooms a ``:rooms`` answer lists (the largest).
ROOMS_LISTED = 20
#: Generated nicks are ``guest-<suffix>``; chosen nicks may not start so.
GUEST_PREFIX = "guest-"
_GUEST_KEY = GUEST_PREFIX.casefold()


# -- commands: what a line starting with ':' may be


@dataclass(frozen=True, slots=True)
class Nick:
    """``:nick NAME``: take ``name`` (valid; display form as typed)."""

    name: str


@dataclass(frozen=True, slots=True)
class Join:
    """``:join ROOM`` or ``:join #ROOM``: ``room`` is valid and has no ``#``."""

    room: str


@dataclass(frozen=True, slots=True)
class Leave:
    """``:leave``."""


@dataclass(frozen=True, slots=True)
class Who:
    """``:who``: the members of your room."""


@dataclass(frozen=True, slots=True)
class ListRooms:
    """``:rooms``: the largest rooms."""


@dataclass(frozen=True, slots=True)
class PrivateMessage:
    """``:msg NICK TEXT``: ``nick`` is a valid name, ``text`` is not empty."""

    nick: str
    text: str


@dataclass(frozen=True, slots=True)
class Help:
    """``:help``."""


ChatCommand = Nick | Join | Leave | Who | ListRooms | PrivateMessage | Help


@dataclass(frozen=True, slots=True)
class UsageError:
    """A chat command with missing or extra arguments; :meth:`line` is the ``error:`` line for the sender."""

    #: How the command is written: ``:msg NICK TEXT``.
    usage: str

    def line(self) -> bytes:
        """``error: usage: :msg NICK TEXT``."""
        return _line(f"{ERROR_PREFIX}usage: {self.usage}")


@dataclass(frozen=True, slots=True)
class InvalidName:
    """A chat command whose nick or room argument breaks the name rules (:func:`validate_name`)."""

    kind: Literal["nick", "room"]

    def line(self) -> bytes:
        """``error: invalid nick`` or ``error: invalid room``."""
        return INVALID_NICK if self.kind == "nick" else INVALID_ROOM


Rejected = UsageError | InvalidName

_USAGE = {
    "nick": ":nick NAME",
    "join": ":join ROOM",
    "leave": ":leave",
    "who": ":who",
    "rooms": ":rooms",
    "msg": ":msg NICK TEXT",
    "help": ":help",
}
_NO_ARGUMENT: dict[str, ChatCommand] = {"leave": Leave(), "who": Who(), "rooms": ListRooms(), "help": Help()}


def parse_command(line: str) -> ChatCommand | Rejected | None:
    """The chat command a received line (decoded, without its line break) is, if any.

    Returns ``None`` for an ordinary message: anything not starting with ``:`` followed at once by one of the
    command words ``nick join leave who rooms msg help`` and then whitespace or the end (``:)``, ``:nickname``,
    ``: nick``, ``:NICK`` and ``:q`` are all ``None``; ``:q`` is the conversation's own business). A command with
    wrong arguments returns :class:`UsageError` or :class:`InvalidName`, whose ``line()`` is the answer.
    """
    if not line.startswith(":") or line[1:2].isspace():
        return None
    parts = line[1:].split(maxsplit=1)
    if not parts or parts[0] not in _USAGE:
        return None
    word = parts[0]
    argument = parts[1].rstrip() if len(parts) == 2 else ""
    if word in _NO_ARGUMENT:
        return UsageError(_USAGE[word]) if argument else _NO_ARGUMENT[word]
    if not argument:
        return UsageError(_USAGE[word])
    if word == "nick":
        name = validate_name(argument)
        return InvalidName("nick") if name is None else Nick(name)
    if word == "join":
        name = validate_name(argument.removeprefix("#"))
        return InvalidName("room") if name is None else Join(name)
    # msg: the text keeps its inner and trailing spacing as typed (split() dropped the separating run only).
    nick_and_text = parts[1].split(maxsplit=1)
    if len(nick_and_text) < 2 or not nick_and_text[1].strip():
        return UsageError(_USAGE[word])
    nick = validate_name(nick_and_text[0])
    return InvalidName("nick") if nick is None else PrivateMessage(nick, nick_and_text[1])


# -- names


def _name_character(char: str, first: bool) -> bool:
    if char.isalpha() or char in "_-" or "0" <= char <= "9":
        return True
    return not first and unicodedata.category(char) in ("Mn", "Mc")


def validate_name(text: str) -> str | None:
    """``text`` if it is a valid nick or room name, else ``None``.

    Valid: 1 to :data:`MAX_NAME` characters, each a letter of any script (``str.isalpha``: ``小明``, ``Zoë``), an
    ASCII digit, ``_`` or ``-``, or (not first) a combining mark. The module docstring says why.
    """
    if not 1 <= len(text) <= MAX_NAME:
        return None
    if not all(_name_character(char, index == 0) for index, char in enumerate(text)):
        return None
    return text


def name_key(name: str) -> str:
    """What two names are compared by: the NFKC case fold (``Bob``, ``BOB`` and ``ｂｏｂ`` are one name)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def is_reserved(name: str) -> bool:
    """True for names only the generator hands out (``guest-…`` in any case)."""
    return name_key(name).startswith(_GUEST_KEY)


def guest_nick(suffix: str) -> str:
    """The generated nick ``guest-<suffix>``. The caller makes the suffix unique (a counter in one process, a
    shared counter across a deployment). Raises :class:`LocalProtocolError` if the result is not a valid name."""
    nick = GUEST_PREFIX + suffix
    if validate_name(nick) is None:
        raise LocalProtocolError(f"guest nick suffix {suffix!r} does not make a valid name")
    return nick


# -- lines the server sends


def _line(text: str) -> bytes:
    """One server line in line framing. Raises :class:`LocalProtocolError` on a line break inside: it would forge a
    second line, and only our own code can have put it there (peer text goes through :func:`relayable`)."""
    if "\n" in text:
        raise LocalProtocolError(f"chat line with a line break inside: {text!r}")
    return text.encode() + NEWLINE


_ESCAPED = {
    code: chr(code).encode("unicode_escape").decode("ascii")
    for code in [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
    if code != 0x09
}


def relayable(text: str) -> str:
    """Peer text made safe to relay to other clients: control characters (but TAB) and U+2028/U+2029 escaped."""
    if text.isprintable():  # the common case; every escaped character is non-printable
        return text
    return text.translate(_ESCAPED)


def _members(count: int) -> str:
    return f"{count} member" if count == 1 else f"{count} members"


def ok_you_are(nick: str) -> bytes:
    """``ok: you are NICK``."""
    return _line(f"{OK_PREFIX}you are {nick}")


def error_nick_taken(nick: str) -> bytes:
    """``error: nick NICK is taken``."""
    return _line(f"{ERROR_PREFIX}nick {nick} is taken")


def ok_joined(room: str, members: int) -> bytes:
    """``ok: joined #ROOM (N members)`` (``1 member`` for one): ``members`` counts the joiner."""
    return _line(f"{OK_PREFIX}joined #{room} ({_members(members)})")


def info_joined(nick: str, room: str) -> bytes:
    """``info: NICK joined #ROOM``, to the others in the room."""
    return _line(f"{INFO_PREFIX}{nick} joined #{room}")


def info_renamed(old: str, new: str) -> bytes:
    """``info: OLD is now NEW``, to the others in the renamed member's room."""
    return _line(f"{INFO_PREFIX}{old} is now {new}")


def ok_left(room: str) -> bytes:
    """``ok: left #ROOM``."""
    return _line(f"{OK_PREFIX}left #{room}")


def info_left(nick: str, room: str, reason: str | None = None) -> bytes:
    """``info: NICK left #ROOM`` (a ``:leave`` or a switch of rooms), or ``info: NICK left #ROOM (REASON)`` when the
    member went (``quit``, ``idle timeout``, ``server lost``, ...)."""
    text = f"{INFO_PREFIX}{nick} left #{room}"
    return _line(text if reason is None else f"{text} ({relayable(reason)})")


def ok_who(room: str, nicks: Iterable[str]) -> bytes:
    """``ok: #ROOM N: nick1 nick2 …``: sorted by :func:`name_key` (then display form), at most :data:`WHO_LISTED`
    names, then ``… and K more``."""
    ordered = sorted(nicks, key=lambda nick: (name_key(nick), nick))
    listed = " ".join(ordered[:WHO_LISTED])
    more = len(ordered) - WHO_LISTED
    text = f"{OK_PREFIX}#{room} {len(ordered)}: {listed}"
    return _line(f"{text} … and {more} more" if more > 0 else text)


def ok_rooms(rooms: Iterable[tuple[str, int]]) -> bytes:
    """``ok: N rooms: #a (3), #b (1), …`` from ``(room, members)`` pairs: N counts every room; the
    :data:`ROOMS_LISTED` largest are listed, largest first, rooms of equal size by :func:`name_key` (so the answer
    is the same on every worker). ``ok: 0 rooms``, ``ok: 1 room: #a (2)``."""
    every = list(rooms)
    largest = heapq.nsmallest(ROOMS_LISTED, every, key=lambda room: (-room[1], name_key(room[0]), room[0]))
    head = f"{OK_PREFIX}{len(every)} room" + ("" if len(every) == 1 else "s")
    if not largest:
        return _line(head)
    return _line(head + ": " + ", ".join(f"#{name} ({count})" for name, count in largest))


def ok_sent(nick: str) -> bytes:
    """``ok: sent to NICK``."""
    return _line(f"{OK_PREFIX}sent to {nick}")


def error_no_such_nick(nick: str) -> bytes:
    """``error: no such nick NICK``."""
    return _line(f"{ERROR_PREFIX}no such nick {nick}")


def room_line(room: str, nick: str, text: str) -> bytes:
    """``#ROOM NICK: TEXT``, to every other member of the room; ``text`` is escaped by :func:`relayable`."""
    return _line(f"#{room} {nick}: {relayable(text)}")


def private_line(sender: str, text: str) -> bytes:
    """``@SENDER: TEXT``, to the addressee; ``text`` is escaped by :func:`relayable`."""
    return _line(f"@{sender}: {relayable(text)}")


#: The default limit on a relayed line: the server's default ``--max-line``.
DEFAULT_RELAY_LIMIT = ProtocolConfig.max_line


def too_long_to_relay(line: bytes, limit: int = DEFAULT_RELAY_LIMIT) -> bytes | None:
    """``None`` if the relayed ``line`` (from :func:`room_line` or :func:`private_line`, newline included) is at most
    ``limit`` bytes without its newline (the server's ``--max-line``); else the answer for its sender,
    ``error: too long to relay, not delivered (limit N bytes)``, and the line must go to no one."""
    if len(line) - len(NEWLINE) <= limit:
        return None
    return _line(f"{ERROR_PREFIX}too long to relay, not delivered (limit {limit} bytes)")


#: What ``:help`` lists.
COMMANDS_HELP = ", ".join([*_USAGE.values(), ":q"])
HELP = _line(f"{OK_PREFIX}commands: {COMMANDS_HELP}")
INVALID_NICK = _line(f"{ERROR_PREFIX}invalid nick")
INVALID_ROOM = _line(f"{ERROR_PREFIX}invalid room")
NOT_IN_A_ROOM = _line(f"{ERROR_PREFIX}not in a room")
TOO_FAST = _line(f"{ERROR_PREFIX}too fast, not delivered")
TOO_MANY_ROOMS = _line(f"{ERROR_PREFIX}too many rooms")
ROOMS_UNAVAILABLE = _line(f"{ERROR_PREFIX}rooms unavailable (broker unreachable)")
#: The answer to every chat command when each worker would have rooms of its own. It names the configuration, not
#: a count: SIGTTIN and SIGTTOU change the number of workers after start-up, and each keeps its start-up settings.
ROOMS_OFF = _line(f"{ERROR_PREFIX}rooms are off: --workers without --redis")
#: The last line to a member whose send queue overflowed (written after whole lines only).
TOO_SLOW = _line(f"{BYE_PREFIX}too slow")


# -- flood control


class RateLimiter:
    """A token bucket: ``rate`` messages per second on average, up to ``burst`` at once (default ``2 * rate``, at
    least 1). ``rate == 0`` allows everything. Pure: the caller passes the time, from a monotonic clock.

    The bucket starts full at the first call. Time going backwards (it must not) refills nothing.
    """

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate < 0 or (burst is not None and burst < 1):
            raise ValueError(f"rate must be >= 0 and burst >= 1, not rate={rate} burst={burst}")
        self._rate = rate
        self._burst = max(2 * rate, 1.0) if burst is None else burst
        self._tokens = self._burst
        self._last: float | None = None

    @property
    def burst(self) -> float:
        """The most messages allowed at once."""
        return self._burst

    def allow(self, now: float) -> bool:
        """True if one more message may go at time ``now`` (seconds), and count it; False if it may not."""
        if self._rate == 0:
            return True
        if self._last is not None and now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
