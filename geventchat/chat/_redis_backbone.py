"""The machinery under :class:`~geventchat.chat.redis_rooms.RedisRooms`: the connection pool and Lua scripts, the one
subscription connection and its listener greenlet (fan-out once per server and room, private lines to a server's
channel, reconnection with back-off and restoring what an empty Redis lost), and presence (heartbeat, sweeping dead
servers). The rooms rules themselves (nick, join, who, …) are in :mod:`geventchat.chat.redis_rooms`; the design is
described there.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock
import redis
from redis.commands.core import Script
from redis.exceptions import RedisError

from ..protocol.chat import (
    DEFAULT_RELAY_LIMIT,
    info_left,
    name_key,
)
from ..protocol.errors import LocalProtocolError
from . import _redis_scripts as scripts
from ._gevent_redis import GeventConnection, connection_pool
from .rooms import DEFAULT_MAX_ROOMS, Member

__all__ = ["BrokerUnavailable", "RedisBackbone"]

log = logging.getLogger("geventchat.chat")

#: Reconnection back-off of the listener: first wait, and the cap it doubles up to.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
#: How long the listener waits for a message before looking at its state again (stop, lost broker).
_LISTEN_SLICE = 1.0
#: Members parted while the broker is down whose removal is kept, by id, for replay once it is back.
MAX_PENDING_PARTS = 10_000


class BrokerUnavailable(Exception):
    """Redis did not answer (ours to report as ``error: rooms unavailable``; not the client's fault)."""


class _Seat:
    __slots__ = ("id", "nick", "room", "room_name")

    def __init__(self, member_id: str, nick: str) -> None:
        self.id = member_id
        self.nick = nick
        self.room: str | None = None  # room key
        self.room_name = ""  # display form


class _Entry:
    """A member joining a room on this server: delivered the room's lines from its join notice on (see JOIN)."""

    __slots__ = ("key", "member", "old", "scripted")

    def __init__(self, member: Member, key: str, old: str | None) -> None:
        self.member = member
        self.key = key
        self.old = old  # the room it leaves by joining (room key), if any
        self.scripted = False  # its JOIN script ran: its notice was published


#: Stands for the room name in a notice whose room name only the JOIN, LEAVE or PART script knows (a room keeps the
#: spelling of the member who opened it); no nick, room name or reason contains it.
_ROOM_SLOT = "\x00"


def _around_room(notice: Callable[[str], bytes]) -> tuple[bytes, bytes]:
    """``notice`` (a function of the room's display name) cut around that name: what the scripts join it with."""
    head, _, tail = notice(_ROOM_SLOT).partition(_ROOM_SLOT.encode())
    return head, tail


class RedisBackbone:
    """Redis connections, subscriptions, the listener and presence for one server (see the module docstring);
    :class:`~geventchat.chat.redis_rooms.RedisRooms` adds the room service on top."""

    #: Member ids parted while the broker is down, kept for replay once it is back. Past it the ids are dropped
    #: (and the log says so once): the server then compares its member set in Redis (``s:<server id>``) with the
    #: members it still has and parts the rest, which costs a scan of that set instead of memory per departure.
    max_pending_parts: int = MAX_PENDING_PARTS

    def __init__(
        self,
        url: str,
        *,
        server_id: str,
        presence_ttl: float = 10.0,
        max_rooms: int = DEFAULT_MAX_ROOMS,
        max_line: int = DEFAULT_RELAY_LIMIT,
        timeout: float = 2.0,
        prefix: str = "geventchat:",
    ) -> None:
        if max_rooms < 1 or max_line < 1:
            raise ValueError(f"max_rooms and max_line must be at least 1, not {max_rooms} and {max_line}")
        if presence_ttl <= 0:
            raise ValueError(f"presence_ttl must be positive, not {presence_ttl}")
        if not server_id or "/" in server_id or " " in server_id:
            raise ValueError(f"server_id must be non-empty without '/' or spaces, not {server_id!r}")
        self.server_id = server_id
        self.presence_ttl = presence_ttl
        self.max_rooms = max_rooms
        #: ``--max-line``: the longest room or private line relayed, in bytes without its newline.
        self.max_line = max_line
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
        # Members joining, by id, until their join notice comes back through the listener; and how many per room
        # key (the room's subscription stays while any is in flight).
        self._entering: dict[str, _Entry] = {}
        self._joining: Counter[str] = Counter()
        self._epoch = 0  # subscription connections opened: a join notice read by an older one is lost with it
        self._ids = itertools.count(1)
        self._server_channel = f"{prefix}srv:{server_id}".encode()
        # The subscription connection: only the listener reads it; writers (SUBSCRIBE from connection greenlets)
        # take the lock so two commands never interleave on the wire.
        self._sub: GeventConnection | None = None
        self._sub_write = gevent.lock.Semaphore()
        self._confirmed: dict[tuple[bytes, bytes], gevent.event.Event] = {}  # (command, channel) -> confirmed
        self._subscribed: set[bytes] = set()
        self._pending_parts: list[str] = []  # member ids parted while the broker was down (capped)
        self._parts_overflowed = False  # more parted than the cap: reconcile s:<server id> instead
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

    def _call(self, script: str, *args: str | int | bytes) -> Any:
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

    def _publish(self, room: str, origin: str, line: bytes) -> bool:
        """``line`` into ``room``: every server's listener, this one's too, delivers it to its members in the room but
        ``origin`` (a member id, or a server id for nobody). Through Redis even for this server's members, so that
        each server delivers a room's lines, notices and joins in the one order Redis published them. Returns False
        if it was not published (nobody got it)."""
        if not self._available:
            return False
        try:
            self._redis.publish(self._room_channel(room), origin.encode() + b" " + line)
        except RedisError as error:
            self._lost(error)
            return False
        return True

    def _deliver_local(self, room: str, sender: Member | None, line: bytes) -> None:
        """``line`` to this server's members in ``room`` but ``sender``: from the listener, in the order Redis
        published the room's lines (and from :meth:`part` while the broker is down)."""
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
        """Subscribe to the room's channel unless already subscribed; returns once Redis confirmed it. Joins to one
        room at once on this server share one SUBSCRIBE: the first sends it, the others wait for its confirmation."""
        channel = self._room_channel(key)
        if channel in self._subscribed:
            return
        pending = self._confirmed.get((b"subscribe", channel))
        if pending is None:
            self._send_subscription(b"SUBSCRIBE", channel)
        else:
            self._await_subscription(pending, channel)

    def _enter(self, member_id: str, entry: _Entry) -> None:
        """Note a join in flight (replacing one not yet seen back: its room is left by this one)."""
        self._abandon(member_id)
        self._entering[member_id] = entry
        self._joining[entry.key] += 1

    def _abandon(self, member_id: str) -> _Entry | None:
        """Forget a join in flight (it failed, the member left or went, or it is in place). Returns it, if any."""
        entry = self._entering.pop(member_id, None)
        if entry is not None:
            self._joining[entry.key] -= 1
            if not self._joining[entry.key]:
                del self._joining[entry.key]
        return entry

    def _abandon_going(self, member: Member, member_id: str) -> None:
        """The member leaves or goes with a join perhaps still in flight: forget the join, and drop it from its old
        room here too, where it stays until its join notice comes back (which then no longer counts)."""
        entry = self._abandon(member_id)
        if entry is not None and entry.old is not None and entry.old != entry.key:
            self._drop_local(member, entry.old)

    def _entered(self, member_id: str, key: str) -> None:
        """The member's join notice came back (or the connection that carried it was lost): from now on this server
        delivers it the room's lines, and no longer its old room's."""
        entry = self._entering.get(member_id)
        if entry is None or entry.key != key:
            return  # not ours, or the member left (or joined elsewhere) meanwhile
        self._abandon(member_id)
        self._local_rooms.setdefault(key, {})[entry.member] = None
        if entry.old is not None and entry.old != key:
            self._drop_local(entry.member, entry.old)

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
        try:
            with self._sub_write:
                sub.send_command(command, channel, check_health=False)
        except (RedisError, OSError) as error:
            self._lost(error)
            raise BrokerUnavailable(str(error)) from error
        if wait:
            self._await_subscription(event, channel)

    def _await_subscription(self, event: gevent.event.Event, channel: bytes) -> None:
        """Wait for the listener to read the SUBSCRIBE confirmation (or to lose the connection it was sent on)."""
        if not event.wait(self.timeout):
            self._lost("no subscription confirmation")
            raise BrokerUnavailable(f"SUBSCRIBE not confirmed within {self.timeout}s")
        if channel not in self._subscribed:
            raise BrokerUnavailable("the subscription connection was lost before SUBSCRIBE was confirmed")

    def _drop_subscription(self) -> None:
        sub, self._sub = self._sub, None
        self._subscribed.clear()
        confirmed, self._confirmed = self._confirmed, {}
        for event in confirmed.values():  # no confirmation will come on a new connection: wake who waits for one
            event.set()
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
            except Exception as error:  # our bug (or an odd reply): the listener must outlive it, or fan-out stops
                log.exception("redis listener: internal error (ours); reconnecting")
                self._lost(error)
            if self._running:
                gevent.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)

    def _open_subscription(self) -> None:
        sub = GeventConnection(**self._pool.connection_kwargs)
        sub.connect()
        rooms = {*self._local_rooms, *self._joining}
        channels = [self._server_channel, *(self._room_channel(key) for key in rooms)]
        sub.send_command(b"SUBSCRIBE", *channels, check_health=False)
        for _ in channels:
            reply = sub.read_response(disconnect_on_error=False)
            self._subscribed.add(reply[1])
        was_lost = self._lost_logged
        self._sub = sub
        self._epoch += 1
        for member_id, entry in list(self._entering.items()):  # their notices may have gone with the old connection
            if entry.scripted:
                self._entered(member_id, entry.key)
        # Before rooms are available again: parts meanwhile are recorded (not sent), so none slips past the replay.
        self._replay_parts()
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
        key = channel.decode()[len(self._prefix) + len("room:") :]
        joiner = origin[:1] == b"+"
        sender_id = (origin[1:] if joiner else origin).decode()
        self._deliver_local(key, self._by_id.get(sender_id), line)
        if joiner:
            self._entered(sender_id, key)

    def _remember_part(self, member_id: str) -> None:
        """A member parted while the broker is down: keep its id for :meth:`_replay_parts`, up to
        :attr:`max_pending_parts`."""
        if self._parts_overflowed:
            return
        if len(self._pending_parts) >= self.max_pending_parts:
            self._parts_overflowed = True
            self._pending_parts.clear()
            log.warning(
                "more than %d members parted while the redis broker was down: their records will be found by "
                "comparing this server's members with Redis once it is back",
                self.max_pending_parts,
            )
            return
        self._pending_parts.append(member_id)

    def _replay_parts(self) -> None:
        """Remove from Redis the members parted while it was down: by id, or, past the cap, every id Redis lists for
        this server that is not connected here. Parts made meanwhile are recorded and taken by the next pass."""
        part = self._scripts["PART"]
        # Bounded by the members this server had: each is parted (and recorded) once.
        while self._parts_overflowed or self._pending_parts:
            if self._parts_overflowed:
                self._parts_overflowed = False  # parts during the scan are recorded again: it may have passed them
                try:
                    for raw in self._redis.sscan_iter(self._key(f"s:{self.server_id}"), count=1000):
                        member_id = _text(raw)
                        if member_id not in self._by_id:
                            part(keys=[], args=[self._prefix, self.server_id, member_id])
                except BaseException:
                    self._parts_overflowed = True  # not done: the next reconnection scans again
                    raise
            pending = self._pending_parts
            # Taken off before its PART: the call yields, and members parted meanwhile are appended to this list
            # (or, past the cap, it is cleared and the scan above takes over). Put back only if the PART failed.
            while pending and not self._parts_overflowed:
                member_id = pending.pop()
                try:
                    part(keys=[], args=[self._prefix, self.server_id, member_id])
                except BaseException:
                    if not self._parts_overflowed:
                        pending.append(member_id)
                    raise

    def _restore(self) -> None:
        """Put back in Redis what a restart may have lost."""
        for seat in list(self._seats.values()):  # the Redis calls below yield: members may come and go meanwhile
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
            except Exception:  # our bug: the heartbeat must go on, or the others sweep our live members
                log.exception("redis presence: internal error (ours)")

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
                self._publish(key, self.server_id, info_left(nick, display, "server lost"))
            log.warning("server %s lost: %d members in rooms announced as left", dead, len(gone) // 3)


def _text(value: bytes | str) -> str:
    """A reply as text (the pool does not decode: room lines are bytes end to end)."""
    return value.decode() if isinstance(value, bytes) else value
