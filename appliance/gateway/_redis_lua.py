"""The Lua scripts of the Redis state store (layout in :mod:`appliance.gateway.state_redis`): each one atomic
across gateways, run with EVALSHA, on Redis's own clock unless a test passes a time."""

# KEYS: 1 throttle, 2-5 buckets (pr pt ar at), 6 burst zset, 7 prompt zset.
# ARGV: 1 now ('' = Redis TIME), 2-5 per-minute capacities, 6 prompt fingerprint, 7 unique member,
#       8 burst_window_s, 9 burst_max_requests, 10 distinct_window_s, 11 distinct_max_prompts, 12 throttle_s.
ADMIT_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local flagged = tonumber(redis.call('GET', KEYS[1]))
if flagged and flagged > now then
  return {'throttled', string.format('%.6f', flagged - now)}
end
local kinds = {'principal.requests', 'principal.tokens', 'adapter.requests', 'adapter.tokens'}
local needs = {1, 0, 1, 0}
local levels = {}
local kind, wait = false, 0
for i = 1, 4 do
  local cap = tonumber(ARGV[i + 1])
  local b = redis.call('HMGET', KEYS[i + 1], 'l', 's', 'c')
  local level = tonumber(b[1])
  if level == nil then
    level = cap
  else
    -- refilled at the rate it was sized for; another profile resizes it, balance (or debt) kept, never refilled
    local old = tonumber(b[3]) or cap
    level = math.min(cap, old, level + math.max(0, now - tonumber(b[2])) * old / 60)
  end
  levels[i] = level
  local w = (needs[i] - level) * 60 / cap
  if w > wait then
    kind, wait = kinds[i], w
  end
end
if kind then
  return {'limited', kind, string.format('%.6f', wait)}
end
for i = 1, 4 do
  local cap = tonumber(ARGV[i + 1])
  local level = levels[i] - needs[i]
  local fmt = string.format
  redis.call('HSET', KEYS[i + 1], 'l', fmt('%.17g', level), 's', fmt('%.17g', now), 'c', ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i + 1], math.ceil((cap - level) * 60000 / cap) + 1000)
end
local bw, bmax = tonumber(ARGV[8]), tonumber(ARGV[9])
local dw, dmax = tonumber(ARGV[10]), tonumber(ARGV[11])
local thr = tonumber(ARGV[12])
redis.call('ZADD', KEYS[6], now, ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. string.format('%.17g', now - bw))
redis.call('PEXPIRE', KEYS[6], math.ceil(bw * 1000) + 1000)
redis.call('ZADD', KEYS[7], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. string.format('%.17g', now - dw))
local n = redis.call('ZCARD', KEYS[7])
if n > dmax + 1 then
  redis.call('ZREMRANGEBYRANK', KEYS[7], 0, n - dmax - 2)
end
redis.call('PEXPIRE', KEYS[7], math.ceil(dw * 1000) + 1000)
local bursts = redis.call('ZCARD', KEYS[6])
local distinct = redis.call('ZCARD', KEYS[7])
local reason, count = false, 0
if bursts > bmax then
  reason, count = 'burst', bursts
elseif distinct > dmax then
  reason, count = 'distinct_prompts', distinct
end
if reason then
  redis.call('SET', KEYS[1], string.format('%.17g', now + thr), 'PX', math.max(1, math.ceil(thr * 1000)))
  redis.call('DEL', KEYS[6], KEYS[7])
  return {'flag', reason, count}
end
return {'ok'}
"""

# KEYS: 1-2 token buckets (pt at). ARGV: 1 now ('' = Redis TIME), 2 tokens. A bucket that does not exist is full.
CHARGE_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local tokens = tonumber(ARGV[2])
for i = 1, 2 do
  local b = redis.call('HMGET', KEYS[i], 'l', 's', 'c')
  local level, cap = tonumber(b[1]), tonumber(b[3])
  if level ~= nil and cap ~= nil then
    level = math.min(cap, level + math.max(0, now - tonumber(b[2])) * cap / 60) - tokens
    redis.call('HSET', KEYS[i], 'l', string.format('%.17g', level), 's', string.format('%.17g', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) * 60000 / cap) + 1000)
  end
end
return 1
"""

# KEYS: 1 session, 2 marker, 3 sweep index. ARGV: 1 sealed data, 2 sealed subject, 3 session TTL ms, 4 marker TTL ms,
# 5 subject and handle sealed for the sweeper ('' = not signed in: not indexed), 6 the session's name.
CREATE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local created = string.format('%.6f', now)
redis.call('HSET', KEYS[1], 'c', created, 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'c', created, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'w', ARGV[5])
  redis.call('ZADD', KEYS[3], string.format('%.6f', now + tonumber(ARGV[3]) / 1000), ARGV[6])
  if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[4]) then
    redis.call('PEXPIRE', KEYS[3], ARGV[4])
  end
end
return created
"""

# KEYS: 1 sweep index. ARGV: 1 at most this many. The names of sessions due to be checked.
DUE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now), 'LIMIT', 0, tonumber(ARGV[1]))
"""

# KEYS: 1 session, 2 marker, 3 sweep index. ARGV: 1 the session's name, 2 absolute lifetime s.
# Still live: re-indexed at its key's expiry, false. Ended: {'expired', reason, w} to the first of GET_LUA and this
# script to find the marker unreported, false to everyone else. The marker keeps only 'c' and the reason ('r') for
# the cookie, should it come back.
SWEEP_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local absolute = tonumber(ARGV[2])
local c = redis.call('HMGET', KEYS[1], 'c')[1]
if c then
  local age = now - tonumber(c)
  if age < absolute then
    local ttl = redis.call('PTTL', KEYS[1])
    local due = now + ttl / 1000
    if ttl < 0 then
      due = tonumber(c) + absolute
    end
    redis.call('ZADD', KEYS[3], string.format('%.6f', due), ARGV[1])
    return false
  end
  redis.call('DEL', KEYS[1])
end
redis.call('ZREM', KEYS[3], ARGV[1])
local m = redis.call('HMGET', KEYS[2], 'c', 'w', 'r')
if not m[1] or m[3] then
  return false
end
local reason = 'idle'
if now - tonumber(m[1]) >= absolute then
  reason = 'absolute'
end
redis.call('HDEL', KEYS[2], 'd', 'w')
redis.call('HSET', KEYS[2], 'r', reason)
return {'expired', reason, m[2] or ''}
"""

# KEYS: 1 session, 2 marker. ARGV: 1 idle timeout ms, 2 absolute lifetime s, 3 touch ('1' or '0').
# A live session: {'ok', created, sealed, now}; an ended one (marker left): {'expired', reason, sealed subject};
# one the sweeper already reported: {'swept', reason}.
GET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local absolute = tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'c', 'd')
if s[1] then
  local age = now - tonumber(s[1])
  if age < absolute then
    if ARGV[3] == '1' then
      redis.call('PEXPIRE', KEYS[1], math.max(1, math.min(tonumber(ARGV[1]), math.floor((absolute - age) * 1000))))
    end
    return {'ok', s[1], s[2], string.format('%.6f', now)}
  end
  redis.call('DEL', KEYS[1])
end
local m = redis.call('HMGET', KEYS[2], 'c', 'd', 'r')
if m[1] then
  redis.call('DEL', KEYS[2])
  if m[3] then
    return {'swept', m[3]}
  end
  local reason = 'idle'
  if now - tonumber(m[1]) >= absolute then
    reason = 'absolute'
  end
  return {'expired', reason, m[2]}
end
return false
"""
