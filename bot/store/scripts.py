"""The Lua scripts that make each multi-key change atomic: a transition, its audit entry
and its idempotency marker land together or not at all, and a commit that finds the record
changed since it was read reports that someone else won instead of overwriting.
"""

from __future__ import annotations

# Appends one audit entry to a stream, trimmed by age (MINID: entries older than the retention
# go, exactly, so each entry is deleted once) and then by count (an approximate backstop).
_APPEND = """
local function append(stream, minid, maxlen, fields)
  local id = redis.call('XADD', stream, 'MINID', minid, '*', unpack(fields))
  redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
  return id
end
"""

CREATE = _APPEND + """
-- KEYS: release, active hash, history, lock, audit, idem, lifecycle, the release's lifecycle ids
-- ARGV: service, release id, record, idem result ('' = none), idem ttl, history len,
--       history ttl, audit minid, audit maxlen, lifecycle minid, lifecycle maxlen,
--       audit fields...
if ARGV[4] ~= '' then
  local prev = redis.call('GET', KEYS[6])
  if prev then return {'duplicate', prev} end
end
local lock = redis.call('GET', KEYS[4])
if lock then return {'locked', lock} end
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur then return {'active', cur} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[1], ARGV[3])
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[7])
local fields = {unpack(ARGV, 12)}
append(KEYS[5], ARGV[8], ARGV[9], fields)
redis.call('RPUSH', KEYS[8], append(KEYS[7], ARGV[10], ARGV[11], fields))
redis.call('EXPIRE', KEYS[8], ARGV[7])
if ARGV[4] ~= '' then redis.call('SET', KEYS[6], ARGV[4], 'EX', ARGV[5]) end
return {'ok', ARGV[2]}
"""


COMMIT = _APPEND + """
-- KEYS: release, active hash, audit, idem, lease, lifecycle, then what a finished release
--       leaves behind: chart points, then the release's lifecycle ids, fence, message refs,
--       granted steps
-- ARGV: expected rev, record, service, release id, terminal '1'/'0', fence token ('' = none),
--       idem result ('' = none), idem ttl, audit minid, audit maxlen, lifecycle minid,
--       lifecycle maxlen ('0' = routine entry, audit stream only), finished ttl, chart ttl,
--       audit fields...
if ARGV[7] ~= '' then
  local prev = redis.call('GET', KEYS[4])
  if prev then return {'duplicate', prev} end
end
local cur = redis.call('GET', KEYS[1])
if not cur then return {'missing', ''} end
if tostring(cjson.decode(cur)['rev']) ~= ARGV[1] then return {'conflict', cur} end
if ARGV[6] ~= '' then
  local lease = redis.call('GET', KEYS[5])
  local token = lease and string.match(lease, '|(%d+)$')
  if token ~= ARGV[6] then return {'fenced', lease or ''} end
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[5] == '1' then
  if redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[4] then redis.call('HDEL', KEYS[2], ARGV[3]) end
  -- A finished release is kept for the retention, counted again from each later change (a
  -- note, a diagnosis) since SET clears a key's expiry.
  redis.call('EXPIRE', KEYS[7], ARGV[14])
  for i = 8, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[13]) end
  redis.call('EXPIRE', KEYS[1], ARGV[13])
end
if #ARGV >= 15 then
  local fields = {unpack(ARGV, 15)}
  append(KEYS[3], ARGV[9], ARGV[10], fields)
  if ARGV[12] ~= '0' then
    -- Each lifecycle entry's id is listed under its release too: a release's own story is
    -- read by id, never by scanning every service's entries since it started.
    redis.call('RPUSH', KEYS[8], append(KEYS[6], ARGV[11], ARGV[12], fields))
    if redis.call('TTL', KEYS[8]) < 0 then redis.call('EXPIRE', KEYS[8], ARGV[13]) end
  end
end
if ARGV[7] ~= '' then redis.call('SET', KEYS[4], ARGV[7], 'EX', ARGV[8]) end
return {'ok', ''}
"""


APPEND_AUDIT = _APPEND + """
-- KEYS: audit, lifecycle, the release's lifecycle ids
-- ARGV: audit minid, audit maxlen, lifecycle minid, lifecycle maxlen ('0' = audit stream only),
--       ids ttl ('0' = the entry names no release), fields...
local fields = {unpack(ARGV, 6)}
append(KEYS[1], ARGV[1], ARGV[2], fields)
if ARGV[4] ~= '0' then
  local id = append(KEYS[2], ARGV[3], ARGV[4], fields)
  if ARGV[5] ~= '0' then
    redis.call('RPUSH', KEYS[3], id)
    if redis.call('TTL', KEYS[3]) < 0 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
  end
end
return 1
"""


LEASES = """
-- KEYS: lease1, fence1, lease2, fence2, ...   ARGV: owner, ttl ms, fence ttl s
-- Returns one fencing token per release: >0 held by us (new or renewed), 0 held by another.
-- A fence outlives every lease it numbered by far (leases last seconds), so it can expire.
local out = {}
for i = 1, #KEYS, 2 do
  local cur = redis.call('GET', KEYS[i])
  if not cur then
    local token = redis.call('INCR', KEYS[i + 1])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[3])
    redis.call('SET', KEYS[i], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
    out[#out + 1] = token
  else
    local owner, token = string.match(cur, '^(.*)|(%d+)$')
    if owner == ARGV[1] then
      redis.call('PEXPIRE', KEYS[i], ARGV[2])
      out[#out + 1] = tonumber(token)
    else
      out[#out + 1] = 0
    end
  end
end
return out
"""


DROP_LEASES = """
local n = 0
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur and string.match(cur, '^(.*)|') == ARGV[1] then redis.call('DEL', KEYS[i]); n = n + 1 end
end
return n
"""


LOCK = """
-- KEYS: lock, idem. ARGV: lock record, idem result ('' = none), idem ttl
if ARGV[2] ~= '' then
  local prev = redis.call('GET', KEYS[2])
  if prev then return {'duplicate', prev} end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) end
  return {'ok', ARGV[1]}
end
return {'locked', redis.call('GET', KEYS[1])}
"""


UNLOCK = """
-- KEYS: lock, idem. ARGV: request id ('' = none), idem ttl
if ARGV[1] ~= '' then
  local prev = redis.call('GET', KEYS[2])
  if prev then return {'duplicate', prev} end
end
local cur = redis.call('GET', KEYS[1])
if not cur then return {'none', ''} end
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' then redis.call('SET', KEYS[2], cur, 'EX', ARGV[2]) end
return {'ok', cur}
"""

# KEYS: granted counter. ARGV: allowed count, ttl seconds. One more grant if fewer than allowed
# were given: 1 (granted) or 0 (not now), atomically across replicas.
GRANT_STEP = """
local given = tonumber(redis.call('GET', KEYS[1]) or '0')
if given < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], given + 1, 'EX', tonumber(ARGV[2]))
  return 1
end
return 0
"""
