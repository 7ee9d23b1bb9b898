-- admit.lua: admission of one generation: budget, requests per minute and concurrent
-- generations, per key and per deployment, decided at once for every API replica.
-- KEYS[1] the key's open generations (sorted set, scored by when a slot lapses, ms)
-- KEYS[2] the deployment's open generations (sorted set, likewise)
-- KEYS[3] the key's usage (hash; field "total")
-- ARGV[1] requests per minute (0: none)   ARGV[2] concurrent generations (0: no limit)
-- ARGV[3] deployment-wide limit (0: none) ARGV[4] stream id (the slot's member)
-- ARGV[5] how long a slot lasts (ms)      ARGV[6] token budget (0: none)
-- ARGV[7] the key's rate-counter prefix (the minute, from Redis' clock, is appended)
-- Returns {"ok", 0}, {"budget", 0}, {"rate", seconds until the minute ends},
-- {"concurrency", 1} or {"global", 1}.
--@include now.lua
local budget = tonumber(ARGV[6])
if budget > 0 and tonumber(redis.call('HGET', KEYS[3], 'total') or '0') >= budget then
  return {'budget', 0}
end
local rpm = tonumber(ARGV[1])
if rpm > 0 then
  local counter = ARGV[7] .. math.floor(now / 60000)
  local n = redis.call('INCR', counter)
  if n == 1 then redis.call('EXPIRE', counter, 61) end
  if n > rpm then return {'rate', 60 - math.floor(now / 1000) % 60} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if tonumber(ARGV[2]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return {'concurrency', 1}
end
if tonumber(ARGV[3]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return {'global', 1}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), ARGV[4])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
return {'ok', 0}
