"""The Lua scripts :class:`~geventchat.chat.redis_rooms.RedisRooms` runs, one per multi-key change, so each change
is atomic on the broker (two servers can never both take one nick, a room's size in the ``rooms`` sorted set always
equals its member set's size, and the room cap is checked and used in one step).

Every script takes the key prefix as ARGV[1] and builds its key names from it (a single Redis, not a cluster).
Key layout (P is the prefix):

- ``P guest``            counter (INCR): generated nicks ``guest-N``, unique across the deployment.
- ``P nicks``            hash: nick key (NFKC case fold) -> member id. The registry that makes nicks unique.
- ``P m:<member id>``    hash: ``nick`` (display), ``key`` (nick key), ``room`` (room key, absent if none).
- ``P r:<room key>``     set of member ids in the room.
- ``P rooms``            sorted set: room key scored by its member count (``:rooms``, the room cap).
- ``P names``            hash: room key -> display name (as its first member typed it).
- ``P s:<server id>``    set of the member ids connected to that server (what a sweep frees).
- ``P servers``          set of server ids that registered (where survivors look for the dead).
- ``P room:<room key>``  pub/sub channel of the room: ``<origin> <line>``, origin a member id, a server id, or
  ``+<member id>`` for the notice of that member's join (see JOIN).
- ``P alive:<server id>``  heartbeat, expires after the presence TTL.
- ``P sweep:<server id>``  lock (SET NX PX): the one survivor announcing a dead server's members.

Member ids are ``<server id>/<n>``.
"""

from __future__ import annotations

# Leave the member's current room (if any): shared by JOIN, LEAVE, PART and SWEEP. Returns the room's display name
# (or false) and whether anyone is left in it.
_LEAVE = """
local function leave(p, mid)
  local room = redis.call('HGET', p .. 'm:' .. mid, 'room')
  if not room then return false, 0 end
  local display = redis.call('HGET', p .. 'names', room)
  redis.call('SREM', p .. 'r:' .. room, mid)
  local left = redis.call('SCARD', p .. 'r:' .. room)
  if left == 0 then
    redis.call('ZREM', p .. 'rooms', room)
    redis.call('HDEL', p .. 'names', room)
  else
    redis.call('ZADD', p .. 'rooms', left, room)
  end
  redis.call('HDEL', p .. 'm:' .. mid, 'room')
  return display, left
end
"""

#: ARGV: prefix, server id, member id. Returns the generated nick.
CONNECT = """
local p, sid, mid = ARGV[1], ARGV[2], ARGV[3]
local nick = 'guest-' .. redis.call('INCR', p .. 'guest')
redis.call('HSET', p .. 'nicks', nick, mid)
redis.call('HSET', p .. 'm:' .. mid, 'nick', nick, 'key', nick)
redis.call('SADD', p .. 's:' .. sid, mid)
return nick
"""

#: ARGV: prefix, member id, new nick key, new display. Returns 1, or 0 when another member holds the nick.
NICK = """
local p, mid, key, display = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local holder = redis.call('HGET', p .. 'nicks', key)
if holder and holder ~= mid then return 0 end
local old = redis.call('HGET', p .. 'm:' .. mid, 'key')
if old and old ~= key and redis.call('HGET', p .. 'nicks', old) == mid then redis.call('HDEL', p .. 'nicks', old) end
redis.call('HSET', p .. 'nicks', key, mid)
redis.call('HSET', p .. 'm:' .. mid, 'nick', display, 'key', key)
return 1
"""

#: ARGV: prefix, member id, room key, room display, max rooms, then the two notices cut around their room name:
#: joined head and tail, left head and tail (``info: NICK joined #`` + display + newline). Publishes them here, in the
#: same atomic step as the change: a server delivers room lines in the order Redis published them, so whoever is in
#: the room when a notice is published is exactly who hears it. The joined notice's origin is ``+<member id>``: the
#: member's server starts delivering the room to it from that line on. Returns {-1} (too many rooms) or
#: {members now, room display, left room display or false}.
JOIN = (
    _LEAVE
    + """
local p, mid, key, display, max = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local current = redis.call('HGET', p .. 'm:' .. mid, 'room')
if current == key then
  return {redis.call('SCARD', p .. 'r:' .. key), redis.call('HGET', p .. 'names', key), false}
end
if redis.call('EXISTS', p .. 'r:' .. key) == 0 then
  local freed = 0
  if current and redis.call('SCARD', p .. 'r:' .. current) == 1 then freed = 1 end
  if redis.call('ZCARD', p .. 'rooms') - freed + 1 > max then return {-1} end
end
local old = false
if current then
  old = leave(p, mid)
  if old then redis.call('PUBLISH', p .. 'room:' .. current, mid .. ' ' .. ARGV[8] .. old .. ARGV[9]) end
end
redis.call('SADD', p .. 'r:' .. key, mid)
local count = redis.call('SCARD', p .. 'r:' .. key)
redis.call('ZADD', p .. 'rooms', count, key)
redis.call('HSETNX', p .. 'names', key, display)
redis.call('HSET', p .. 'm:' .. mid, 'room', key)
local shown = redis.call('HGET', p .. 'names', key)
redis.call('PUBLISH', p .. 'room:' .. key, '+' .. mid .. ' ' .. ARGV[6] .. shown .. ARGV[7])
return {count, shown, old}
"""
)

#: ARGV: prefix, member id, left notice head and tail (as for JOIN). Publishes the notice (origin: the member id)
#: in the same step. Returns the left room's display name (or nil).
LEAVE = (
    _LEAVE
    + """
local p, mid = ARGV[1], ARGV[2]
local room = redis.call('HGET', p .. 'm:' .. mid, 'room')
local display = leave(p, mid)
if display then redis.call('PUBLISH', p .. 'room:' .. room, mid .. ' ' .. ARGV[3] .. display .. ARGV[4]) end
return display
"""
)

#: ARGV: prefix, server id, member id, and optionally the left notice's head and tail (as for JOIN; published in
#: the same step, origin the member id; a replay after an outage passes none). Frees the member's nick, room seat
#: and record.
PART = (
    _LEAVE
    + """
local p, sid, mid, head, tail = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local room = redis.call('HGET', p .. 'm:' .. mid, 'room')
local display = leave(p, mid)
if display and head then redis.call('PUBLISH', p .. 'room:' .. room, mid .. ' ' .. head .. display .. tail) end
local key = redis.call('HGET', p .. 'm:' .. mid, 'key')
if key and redis.call('HGET', p .. 'nicks', key) == mid then redis.call('HDEL', p .. 'nicks', key) end
redis.call('DEL', p .. 'm:' .. mid)
redis.call('SREM', p .. 's:' .. sid, mid)
return 1
"""
)

#: ARGV: prefix, room key. Returns {room display, nick, nick, ...} (display false when the room is gone).
WHO = """
local p, key = ARGV[1], ARGV[2]
local out = {redis.call('HGET', p .. 'names', key)}
for _, mid in ipairs(redis.call('SMEMBERS', p .. 'r:' .. key)) do
  local nick = redis.call('HGET', p .. 'm:' .. mid, 'nick')
  if nick then out[#out + 1] = nick end
end
return out
"""

#: ARGV: prefix, how many. Returns {total, display, size, display, size, ...}: the ``how many`` largest rooms and
#: every room tied with the smallest of them (the caller orders ties by name, as LocalRooms does).
ROOMS = """
local p, n = ARGV[1], tonumber(ARGV[2])
local total = redis.call('ZCARD', p .. 'rooms')
local out = {total}
local top = redis.call('ZREVRANGE', p .. 'rooms', n - 1, n - 1, 'WITHSCORES')
local floor = '-inf'
if #top > 0 then floor = top[2] end
local rooms = redis.call('ZRANGEBYSCORE', p .. 'rooms', floor, '+inf', 'WITHSCORES')
for i = 1, #rooms, 2 do
  out[#out + 1] = redis.call('HGET', p .. 'names', rooms[i]) or rooms[i]
  out[#out + 1] = rooms[i + 1]
end
return out
"""

#: ARGV: prefix, dead server id. Frees every member of that server; returns {nick, room display, room key, ...}
#: for each member that was in a room (the caller announces them).
SWEEP = (
    _LEAVE
    + """
local p, sid = ARGV[1], ARGV[2]
local out = {}
for _, mid in ipairs(redis.call('SMEMBERS', p .. 's:' .. sid)) do
  local nick = redis.call('HGET', p .. 'm:' .. mid, 'nick')
  local room = redis.call('HGET', p .. 'm:' .. mid, 'room')
  local display = leave(p, mid)
  if display and nick then
    out[#out + 1] = nick
    out[#out + 1] = display
    out[#out + 1] = room
  end
  local key = redis.call('HGET', p .. 'm:' .. mid, 'key')
  if key and redis.call('HGET', p .. 'nicks', key) == mid then redis.call('HDEL', p .. 'nicks', key) end
  redis.call('DEL', p .. 'm:' .. mid)
end
redis.call('DEL', p .. 's:' .. sid)
redis.call('SREM', p .. 'servers', sid)
return out
"""
)

#: ARGV: prefix, server id, member id, nick key, nick display, room key or '', room display. Puts a still-connected
#: member back after the broker lost it (restarted empty). Returns 1, or 0 if its nick was taken meanwhile (the
#: member keeps its nick locally but is not reachable by ``:msg``).
RESTORE = """
local p, sid, mid, key, nick, room, display = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
redis.call('SADD', p .. 's:' .. sid, mid)
redis.call('HSET', p .. 'm:' .. mid, 'nick', nick, 'key', key)
local claimed = redis.call('HSETNX', p .. 'nicks', key, mid) == 1 or redis.call('HGET', p .. 'nicks', key) == mid
if room ~= '' then
  redis.call('SADD', p .. 'r:' .. room, mid)
  redis.call('ZADD', p .. 'rooms', redis.call('SCARD', p .. 'r:' .. room), room)
  redis.call('HSETNX', p .. 'names', room, display)
  redis.call('HSET', p .. 'm:' .. mid, 'room', room)
end
if claimed then return 1 end
return 0
"""
