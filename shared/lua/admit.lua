-- admit.lua: admission of one job: token budget, requests per minute and concurrent jobs,
-- per key and per deployment, decided at once for every API replica. Nothing is taken
-- unless everything passes: a refusal uses up no request of the minute.
-- KEYS[1] the key's open jobs (sorted set, scored by when a slot lapses, ms)
-- KEYS[2] the deployment's open jobs (sorted set, likewise)
-- KEYS[3] the key's usage (hash; fields "total" spent and "reserved" held by open jobs)
-- KEYS[4] the key's reservations (hash: job id -> tokens held)
-- KEYS[5] the key's requests of the last minute (sorted set: job id -> when, ms)
-- KEYS[6] the key's stored bytes (hash: "level" bytes at "at" ms; drains steadily)
-- ARGV[1] requests per minute (0: none)   ARGV[2] concurrent jobs (0: no limit)
-- ARGV[3] deployment-wide limit (0: none) ARGV[4] job id (the slot's member)
-- ARGV[5] how long a slot lasts (ms)      ARGV[6] token budget (0: none)
-- ARGV[7] the job's worst case in tokens (-1: unbounded; 0: it spends none)
-- ARGV[8] the job's estimated input tokens (what it costs at the least)
-- ARGV[9] the bytes the job makes Spool keep, weighted by how long it keeps them
-- ARGV[10] the key's stored-bytes quota (0: none)
-- ARGV[11] how long the quota takes to drain from full (ms)
-- Returns {"ok", 0, tokens reserved}, {"budget", 0, 0},
-- {"rate", seconds until a request of the minute ages out, 0}, {"concurrency", 1, 0},
-- {"global", 1, 0} or {"storage", seconds until the job's bytes fit, 0}.
--@include now.lua
local id = ARGV[4]

-- Slots that lapsed (a job whose end was never settled) give back their reservations.
for _, lapsed in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local held = redis.call('HGET', KEYS[4], lapsed)
  if held then
    redis.call('HDEL', KEYS[4], lapsed)
    redis.call('HINCRBY', KEYS[3], 'reserved', -tonumber(held))
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)

local reserve = 0
local budget = tonumber(ARGV[6])
if budget > 0 then
  local usage = redis.call('HMGET', KEYS[3], 'total', 'reserved')
  local left = budget - tonumber(usage[1] or '0') - tonumber(usage[2] or '0')
  local want, input = tonumber(ARGV[7]), tonumber(ARGV[8])
  -- What is left must pay for the input and at least one token of output.
  if left <= 0 or (want ~= 0 and left <= input) then return {'budget', 0, 0} end
  reserve = left
  if want >= 0 and want < left then reserve = want end
end

local quota, stored = tonumber(ARGV[10]), 0
if quota > 0 then
  local window, size = tonumber(ARGV[11]), tonumber(ARGV[9])
  local bucket = redis.call('HMGET', KEYS[6], 'level', 'at')
  local drained = (now - tonumber(bucket[2] or now)) * quota / window
  stored = math.max(0, tonumber(bucket[1] or '0') - drained)
  if stored + size > quota then
    return {'storage', math.max(1, math.ceil((stored + size - quota) * window / quota / 1000)), 0}
  end
  stored = stored + size
end

local rpm = tonumber(ARGV[1])
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[5]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
    return {'rate', math.max(1, math.ceil((tonumber(oldest[2]) + 60000 - now) / 1000)), 0}
  end
end
if tonumber(ARGV[2]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return {'concurrency', 1, 0}
end
if tonumber(ARGV[3]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return {'global', 1, 0}
end

if quota > 0 then
  redis.call('HSET', KEYS[6], 'level', math.floor(stored), 'at', now)
  redis.call('PEXPIRE', KEYS[6], tonumber(ARGV[11]))
end
if rpm > 0 then
  redis.call('ZADD', KEYS[5], now, id)
  redis.call('PEXPIRE', KEYS[5], 60000)
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), id)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), id)
if reserve > 0 then
  redis.call('HSET', KEYS[4], id, reserve)
  redis.call('HINCRBY', KEYS[3], 'reserved', reserve)
end
return {'ok', 0, reserve}
