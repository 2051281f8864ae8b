"""Rooms across workers and hosts: :class:`RedisRooms`, the :class:`~geventchat.chat.rooms.RoomService` every server
of a deployment shares through one Redis (``--redis redis://HOST:PORT/DB``); the server starts and stops it.

Where things live
    Redis holds what every server must agree on: the nick registry, room membership and sizes, each server's
    members, heartbeats (key layout: :mod:`geventchat.chat._redis_scripts`). Every change that touches several keys
    is one Lua script, so it is atomic: two servers cannot take one nick, a room's size always equals its member
    count, and ``--max-rooms`` is checked and used in one step. Each server also keeps its *own* members in memory
    (nick, room): what it delivers to, and what it puts back if Redis restarts empty.

Fan-out: once per server and room, not per member
    A server subscribes to a room's channel ``<prefix>room:<key>`` when its first local member joins and
    unsubscribes when its last leaves. A room line is delivered at once to the sender's local room-mates and
    published once (tagged with the origin server); every other subscribed server delivers it to its local members.
    Private messages are published to the owning server's channel ``<prefix>srv:<server id>``. One listener
    greenlet per server reads the subscription connection. Delivery is at most once, live: nothing is stored for a
    member that is not connected, and a line published while a server's subscription is down is lost to it.

Presence
    Each server sets ``alive:<id>`` with a TTL of ``presence_ttl`` and refreshes it every ``presence_ttl / 3``; on
    the same tick it looks for registered servers whose heartbeat expired. For each, one survivor (the one that wins
    ``SET sweep:<id> NX``) frees the dead server's nicks and seats in one script and announces
    ``info: NICK left #ROOM (server lost)`` to each of their rooms. A dead server is announced between
    ``presence_ttl`` and ``presence_ttl * 4 / 3`` after its last heartbeat.

Broker unreachable
    Every method answers ``error: rooms unavailable (broker unreachable)`` instead of raising (``part`` cleans up
    locally and replays the removal in Redis later). The listener reconnects with back-off (0.1 s doubling to 5 s),
    re-subscribes the rooms its members are in, and puts back what Redis lost if it restarted empty: its members'
    records, nicks (unless another server's member took one meanwhile: then that member keeps its nick locally
    but is not reachable by ``:msg``, and the log says so) and room seats. What does not survive a Redis restart:
    the guest counter (restarts at 1, so a new guest may get a number a connected guest still has; the guest
    keeps it locally, the registry names the newer one) and lines published while the broker was down. The log
    says once that the broker was lost and once that it is back (logger ``geventchat.chat``).

Gevent: redis-py over gevent sockets (:mod:`geventchat.chat._gevent_redis`), no monkey-patching. Methods are called
from connection greenlets and may block cooperatively; each Redis round trip is bounded by ``timeout``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
from collections import Counter
from typing import Any

import gevent
import gevent.event
import gevent.lock
import redis
from redis.commands.core import Script
from redis.exceptions import RedisError

from ..protocol.chat import (
    INVALID_NICK,
    NOT_IN_A_ROOM,
    ROOMS_LISTED,
    ROOMS_UNAVAILABLE,
    TOO_MANY_ROOMS,
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
    private_line,
    room_line,
    validate_name,
)
from ..protocol.errors import LocalProtocolError
from . import _redis_scripts as scripts
from ._gevent_redis import GeventConnection, connection_pool
from .rooms import DEFAULT_MAX_ROOMS, Member

__all__ = ["BrokerUnavailable", "RedisRooms"]

log = logging.getLogger("geventchat.chat")

#: Reconnection back-off of the listener: first wait, and the cap it doubles up to.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
#: How long the listener waits for a message before looking at its state again (stop, lost broker).
_LISTEN_SLICE = 1.0
_NOT_NAME = re.compile(r"[^\w-]")


class BrokerUnavailable(Exception):
    """Redis did not answer (ours to report as ``error: rooms unavailable``; not the client's fault)."""


class _Seat:
    __slots__ = ("id", "nick", "room", "room_name")

    def __init__(self, member_id: str, nick: str) -> None:
        self.id = member_id
        self.nick = nick
        self.room: str | None = None  # room key
        self.room_name = ""  # display form


class RedisRooms:
    """Rooms shared by every server on one Redis. ``server_id`` must be unique in the deployment (a dead server's
    members are freed by it). :meth:`start` before use; :meth:`stop` to leave cleanly; :meth:`kill` simulates a
    crash (greenlets stop, nothing is cleaned up: the survivors will announce ``server lost``)."""

    def __init__(
        self,
        url: str,
        *,
        server_id: str,
        presence_ttl: float = 10.0,
        max_rooms: int = DEFAULT_MAX_ROOMS,
        timeout: float = 2.0,
        prefix: str = "geventchat:",
    ) -> None:
        if max_rooms < 1:
            raise ValueError(f"max_rooms must be at least 1, not {max_rooms}")
        if presence_ttl <= 0:
            raise ValueError(f"presence_ttl must be positive, not {presence_ttl}")
        if not server_id or "/" in server_id or " " in server_id:
            raise ValueError(f"server_id must be non-empty without '/' or spaces, not {server_id!r}")
        self.server_id = server_id
        self.presence_ttl = presence_ttl
        self.max_rooms = max_rooms
        self.timeout = timeout
        self._prefix = prefix
        self._pool = connection_pool(url, timeout=timeout)
        self._redis = redis.Redis(connection_pool=self._pool)
        self._scripts: dict[str, Script] = {
            name: self._redis.register_script(getattr(scripts, name))
            for name in ("CONNECT", "NICK", "JOIN", "LEAVE", "PART", "WHO", "ROOMS", "SWEEP", "RESTORE")
        }
        self._seats: dict[Member, _Seat] = {}
        self._by_id: dict[str, Member] = {}
        self._local_rooms: dict[str, dict[Member, None]] = {}  # room key -> this server's members in it
        self._joining: Counter[str] = Counter()  # room key -> joins in flight on this server
        self._ids = itertools.count(1)
        self._server_channel = f"{prefix}srv:{server_id}".encode()
        # The subscription connection: only the listener reads it; writers (SUBSCRIBE from connection greenlets)
        # take the lock so two commands never interleave on the wire.
        self._sub: GeventConnection | None = None
        self._sub_write = gevent.lock.Semaphore()
        self._confirmed: dict[tuple[bytes, bytes], gevent.event.Event] = {}  # (command, channel) -> confirmed
        self._subscribed: set[bytes] = set()
        self._pending_parts: list[str] = []  # member ids parted while the broker was down
        self._barriers: dict[str, gevent.event.Event] = {}
        self._barrier_ids = itertools.count(1)
        self._available = False
        self._lost_logged = False
        self._ready = gevent.event.Event()
        self._greenlets: list[Any] = []
        self._running = False

    # -- lifecycle

    def start(self, wait: float | None = None) -> None:
        """Start the listener and the presence greenlet. With ``wait``, block up to that many seconds until the
        broker answered once (raises :class:`BrokerUnavailable` if not); without, rooms answer ``unavailable``
        until it does."""
        if self._running:
            raise LocalProtocolError("start() called twice")
        self._running = True
        self._greenlets = [gevent.spawn(self._listen), gevent.spawn(self._presence)]
        if wait is not None and not self._ready.wait(wait):
            raise BrokerUnavailable(f"redis did not answer within {wait}s")

    def kill(self) -> None:
        """Stop every greenlet and drop the connections without telling Redis anything (as a crash would)."""
        self._running = False
        gevent.killall(self._greenlets)
        self._greenlets = []
        self._drop_subscription()
        self._pool.disconnect()
        self._available = False

    def stop(self) -> None:
        """Part every local member still connected (``shutdown``), withdraw this server's heartbeat, then
        :meth:`kill`."""
        for member in list(self._seats):
            self.part(member, "server shutting down")
        try:
            self._redis.delete(self._key(f"alive:{self.server_id}"))
            self._redis.srem(self._key("servers"), self.server_id)
        except RedisError:
            pass  # the broker is gone: the survivors will sweep us after the TTL
        self.kill()

    # -- read-only views

    def nick_of(self, member: Member) -> str:
        """The member's nick, display form."""
        return self._seat(member).nick

    def room_of(self, member: Member) -> str | None:
        """The member's room (display form, no ``#``), or ``None``."""
        seat = self._seat(member)
        return None if seat.room is None else seat.room_name

    @property
    def available(self) -> bool:
        """True while the broker answers."""
        return self._available

    @property
    def room_count(self) -> int:
        """Rooms that exist across the deployment (asks Redis)."""
        return int(self._redis.zcard(self._key("rooms")))

    @property
    def member_count(self) -> int:
        """Members connected to this server."""
        return len(self._seats)

    # -- RoomService

    def connect(self, member: Member) -> str:
        if member in self._seats:
            raise LocalProtocolError("connect() called twice for one member")
        member_id = f"{self.server_id}/{next(self._ids)}"
        try:
            nick = _text(self._call("CONNECT", self.server_id, member_id))
        except BrokerUnavailable:
            # A nick is needed even without the broker: one only this server can make (its id in it), which
            # RESTORE registers once Redis is back.
            nick = guest_nick(f"{_NOT_NAME.sub('-', self.server_id)}-{member_id.rsplit('/', 1)[1]}"[-26:])
        seat = _Seat(member_id, nick)
        self._seats[member] = seat
        self._by_id[member_id] = member
        return nick

    def nick(self, member: Member, name: str) -> bytes:
        seat = self._seat(member)
        old = seat.nick
        new_key = name_key(name)
        if validate_name(name) is None or (is_reserved(name) and new_key != name_key(old)):
            return INVALID_NICK
        try:
            if not self._call("NICK", seat.id, new_key, name):
                return error_nick_taken(name)
        except BrokerUnavailable:
            return ROOMS_UNAVAILABLE
        if name == old:
            return ok_you_are(name)
        seat.nick = name
        if seat.room is not None:
            self._broadcast(seat.room, member, info_renamed(old, name))
        return ok_you_are(name)

    def join(self, member: Member, room: str) -> bytes:
        seat = self._seat(member)
        if validate_name(room) is None:
            raise LocalProtocolError(f"join() of an invalid room name {room!r}: parse_command() refuses those")
        key = name_key(room)
        # While joining, the room's subscription must stay even if its last local member leaves meanwhile.
        self._joining[key] += 1
        try:
            # Subscribe before joining so no line published after our ok: is missed.
            self._need_room(key)
            result = self._call("JOIN", seat.id, key, room, self.max_rooms)
        except BrokerUnavailable:
            result = None
        finally:
            self._joining[key] -= 1
            if not self._joining[key]:
                del self._joining[key]
        if result is None or result[0] == -1:
            self._maybe_unsubscribe(key)
            return ROOMS_UNAVAILABLE if result is None else TOO_MANY_ROOMS
        count, display = int(result[0]), result[1].decode()
        old = seat.room
        if old == key:
            return ok_joined(display, count)
        if old is not None:
            self._drop_local(member, old)
            self._broadcast(old, member, info_left(seat.nick, seat.room_name))
        seat.room, seat.room_name = key, display
        self._broadcast(key, member, info_joined(seat.nick, display))
        self._local_rooms.setdefault(key, {})[member] = None
        return ok_joined(display, count)

    def leave(self, member: Member) -> bytes:
        seat = self._seat(member)
        room = seat.room
        if room is None:
            return NOT_IN_A_ROOM
        try:
            self._call("LEAVE", seat.id)
        except BrokerUnavailable:
            return ROOMS_UNAVAILABLE
        name = seat.room_name
        seat.room = None
        self._drop_local(member, room)
        self._broadcast(room, member, info_left(seat.nick, name))
        return ok_left(name)

    def who(self, member: Member) -> bytes:
        seat = self._seat(member)
        if seat.room is None:
            return NOT_IN_A_ROOM
        try:
            result = self._call("WHO", seat.room)
        except BrokerUnavailable:
            return ROOMS_UNAVAILABLE
        return ok_who(seat.room_name, [nick.decode() for nick in result[1:]])

    def list_rooms(self, member: Member) -> bytes:
        self._seat(member)
        try:
            result = self._call("ROOMS", ROOMS_LISTED)
        except BrokerUnavailable:
            return ROOMS_UNAVAILABLE
        total = int(result[0])
        rooms = [(result[i].decode(), int(result[i + 1])) for i in range(1, len(result), 2)]
        # ok_rooms counts the rooms it is given: the largest and their ties, not every room. Put the real total in
        # its head ("ok: N rooms"); room names cannot contain ":", so the first ":" after the prefix ends the head.
        _, sep, listing = ok_rooms(rooms).removeprefix(b"ok: ").partition(b":")
        head = f"ok: {total} room".encode() + (b"" if total == 1 else b"s")
        return head + (sep + listing if sep else b"\n")

    def message(self, member: Member, nick: str, text: str) -> bytes:
        sender = self._seat(member).nick
        if not self._available:
            return ROOMS_UNAVAILABLE
        try:
            found = self._redis.hget(self._key("nicks"), name_key(nick))
            if found is None:
                return error_no_such_nick(nick)
            target_id = _text(found)
            target = self._by_id.get(target_id)
            line = private_line(sender, text)
            if target is not None:
                target.deliver(line)
                return ok_sent(self._seats[target].nick)
            display = self._redis.hget(self._key(f"m:{target_id}"), "nick")
            owner = target_id.rsplit("/", 1)[0]
            self._redis.publish(self._key(f"srv:{owner}"), target_id.encode() + b" " + line)
        except RedisError as error:
            self._lost(error)
            return ROOMS_UNAVAILABLE
        return ok_sent(nick if display is None else _text(display))

    def say(self, member: Member, text: str) -> bytes | None:
        seat = self._seat(member)
        if seat.room is None:
            return None
        if not self._available:
            return ROOMS_UNAVAILABLE
        if not self._broadcast(seat.room, member, room_line(seat.room_name, seat.nick, text)):
            return ROOMS_UNAVAILABLE
        return None

    def part(self, member: Member, reason: str) -> None:
        seat = self._seats.pop(member, None)
        if seat is None:
            return
        del self._by_id[seat.id]
        if seat.room is not None:
            self._drop_local(member, seat.room)
            self._broadcast(seat.room, member, info_left(seat.nick, seat.room_name, reason))
        try:
            self._call("PART", self.server_id, seat.id)
        except BrokerUnavailable:
            self._pending_parts.append(seat.id)  # replayed once the broker is back

    # -- test and operations helpers

    def barrier(self, timeout: float = 5.0) -> None:
        """Return once this server's listener has handled every line published before the call (publishes a token
        to this server's own channel and waits for it: Redis delivers a subscriber's messages in order). Raises
        :class:`BrokerUnavailable` if it does not come back within ``timeout``."""
        token = f"barrier-{next(self._barrier_ids)}"
        event = self._barriers[token] = gevent.event.Event()
        try:
            self._redis.publish(self._server_channel, f"! {token}".encode())
            if not event.wait(timeout):
                raise BrokerUnavailable(f"barrier {token} not back within {timeout}s")
        except RedisError as error:
            raise BrokerUnavailable(str(error)) from error
        finally:
            del self._barriers[token]

    # -- internals: Redis calls

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _call(self, script: str, *args: str | int) -> Any:
        if not self._available:
            raise BrokerUnavailable("broker lost; the listener is reconnecting")
        try:
            return self._scripts[script](keys=[], args=[self._prefix, *args])
        except RedisError as error:
            self._lost(error)
            raise BrokerUnavailable(str(error)) from error

    def _lost(self, error: BaseException | str) -> None:
        """Note the broker is gone: methods answer ``unavailable`` and the listener reconnects. Logged once."""
        self._available = False
        if not self._lost_logged:
            self._lost_logged = True
            log.warning("redis broker lost (%s): rooms unavailable, reconnecting", error)
        self._drop_subscription()

    def _seat(self, member: Member) -> _Seat:
        seat = self._seats.get(member)
        if seat is None:
            raise LocalProtocolError("the member is not connected (connect() first, nothing after part())")
        return seat

    # -- internals: fan-out

    def _room_channel(self, key: str) -> bytes:
        return f"{self._prefix}room:{key}".encode()

    def _broadcast(self, room: str, sender: Member | None, line: bytes) -> bool:
        """``line`` to every member of ``room`` but ``sender``: this server's at once, the others' through one
        publish. Returns False if the publish failed (the local members got it)."""
        self._deliver_local(room, sender, line)
        if not self._available:
            return False
        try:
            self._redis.publish(self._room_channel(room), self.server_id.encode() + b" " + line)
        except RedisError as error:
            self._lost(error)
            return False
        return True

    def _deliver_local(self, room: str, sender: Member | None, line: bytes) -> None:
        members = self._local_rooms.get(room)
        if not members:
            return
        for other in tuple(members):  # a delivery may part a member (its outbox overflowed)
            if other is not sender and other in members:
                other.deliver(line)

    def _drop_local(self, member: Member, room: str) -> None:
        members = self._local_rooms.get(room)
        if members is not None:
            members.pop(member, None)
        self._maybe_unsubscribe(room)

    def _need_room(self, key: str) -> None:
        """Subscribe to the room's channel unless already subscribed; returns once Redis confirmed it."""
        channel = self._room_channel(key)
        if channel in self._subscribed:
            return
        self._send_subscription(b"SUBSCRIBE", channel)

    def _maybe_unsubscribe(self, key: str) -> None:
        if self._local_rooms.get(key) or self._joining.get(key):
            return
        self._local_rooms.pop(key, None)
        channel = self._room_channel(key)
        if channel not in self._subscribed:
            return
        self._subscribed.discard(channel)
        # If the broker is gone, the reconnected listener subscribes only the rooms still needed.
        with contextlib.suppress(BrokerUnavailable):
            self._send_subscription(b"UNSUBSCRIBE", channel, wait=False)

    def _send_subscription(self, command: bytes, channel: bytes, *, wait: bool = True) -> None:
        sub = self._sub
        if sub is None or not self._available:
            raise BrokerUnavailable("no subscription connection")
        event = self._confirmed.setdefault((command.lower(), channel), gevent.event.Event())
        event.clear()
        try:
            with self._sub_write:
                sub.send_command(command, channel, check_health=False)
        except (RedisError, OSError) as error:
            self._lost(error)
            raise BrokerUnavailable(str(error)) from error
        if wait and not event.wait(self.timeout):
            self._lost("no subscription confirmation")
            raise BrokerUnavailable(f"{command.decode()} not confirmed within {self.timeout}s")

    def _drop_subscription(self) -> None:
        sub, self._sub = self._sub, None
        self._subscribed.clear()
        if sub is not None:
            sub.disconnect()

    # -- internals: the listener

    def _listen(self) -> None:
        backoff = BACKOFF_FIRST
        while self._running:  # bounded by stop()/kill(); each pass waits at least a back-off or a read slice
            try:
                self._open_subscription()
                backoff = BACKOFF_FIRST
                self._read_messages()
            except (RedisError, OSError, BrokerUnavailable) as error:
                self._lost(error)
            if self._running:
                gevent.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)

    def _open_subscription(self) -> None:
        sub = GeventConnection(**self._pool.connection_kwargs)
        sub.connect()
        channels = [self._server_channel, *(self._room_channel(key) for key in self._local_rooms)]
        sub.send_command(b"SUBSCRIBE", *channels, check_health=False)
        for _ in channels:
            reply = sub.read_response(disconnect_on_error=False)
            self._subscribed.add(reply[1])
        was_lost = self._lost_logged
        self._sub = sub
        self._available = True
        self._restore()
        self._heartbeat()
        self._ready.set()
        if was_lost:
            self._lost_logged = False
            log.warning("redis broker back: rooms available again")

    def _read_messages(self) -> None:
        while self._running and self._sub is not None:  # one message per pass; a read waits at most a slice
            sub = self._sub
            try:
                reply = sub.read_response(timeout=_LISTEN_SLICE, disconnect_on_error=False)
            except redis.exceptions.TimeoutError:
                continue
            kind, channel = reply[0], reply[1]
            if kind == b"message":
                self._dispatch(channel, reply[2])
            elif kind in (b"subscribe", b"unsubscribe"):
                # Replies come in the order the commands were sent, so the last one leaves the right state.
                if kind == b"subscribe":
                    self._subscribed.add(channel)
                else:
                    self._subscribed.discard(channel)
                event = self._confirmed.pop((kind, channel), None)
                if event is not None:
                    event.set()

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        origin, _, line = payload.partition(b" ")
        if channel == self._server_channel:
            if origin == b"!":
                event = self._barriers.get(line.decode())
                if event is not None:
                    event.set()
                return
            member = self._by_id.get(origin.decode())
            if member is not None:
                member.deliver(line)
            return
        if origin == self.server_id.encode():
            return  # delivered locally when it was sent
        key = channel.decode()[len(self._prefix) + len("room:") :]
        self._deliver_local(key, None, line)

    def _restore(self) -> None:
        """Put back in Redis what a restart may have lost, and remove what was parted while it was down."""
        for member_id in self._pending_parts:
            self._scripts["PART"](keys=[], args=[self._prefix, self.server_id, member_id])
        self._pending_parts.clear()
        for seat in self._seats.values():
            args = [self._prefix, self.server_id, seat.id, name_key(seat.nick), seat.nick]
            args += [seat.room or "", seat.room_name]
            if not self._scripts["RESTORE"](keys=[], args=args):
                log.warning("nick %s was taken while the broker was down: not reachable by :msg", seat.nick)

    # -- internals: presence

    def _heartbeat(self) -> None:
        self._redis.set(self._key(f"alive:{self.server_id}"), b"1", px=int(self.presence_ttl * 1000))
        self._redis.sadd(self._key("servers"), self.server_id)

    def _presence(self) -> None:
        while self._running:  # bounded by stop()/kill()
            gevent.sleep(self.presence_ttl / 3)
            if not self._available:
                continue
            try:
                self._heartbeat()
                self._sweep()
            except RedisError as error:
                self._lost(error)
            except BrokerUnavailable:
                pass  # _call() noted it

    def _sweep(self) -> None:
        for raw in self._redis.smembers(self._key("servers")):
            dead = _text(raw)
            if dead == self.server_id or self._redis.exists(self._key(f"alive:{dead}")):
                continue
            lock = self._key(f"sweep:{dead}")
            if not self._redis.set(lock, self.server_id.encode(), nx=True, px=int(self.presence_ttl * 1000)):
                continue  # another survivor sweeps it
            gone = self._call("SWEEP", dead)
            for i in range(0, len(gone), 3):
                nick, display, key = (part.decode() for part in gone[i : i + 3])
                self._broadcast(key, None, info_left(nick, display, "server lost"))
            log.warning("server %s lost: %d members in rooms announced as left", dead, len(gone) // 3)


def _text(value: bytes | str) -> str:
    """A reply as text (the pool does not decode: room lines are bytes end to end)."""
    return value.decode() if isinstance(value, bytes) else value
