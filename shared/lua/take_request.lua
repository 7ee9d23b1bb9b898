-- take_request.lua: one request of a key's minute for something that is not a job (a
-- follow token minted), on the same sliding minute as admit.lua's.
-- KEYS[1] the key's requests of the last minute (sorted set: member -> when, ms)
-- ARGV[1] requests per minute        ARGV[2] the request's member (unique)
-- Returns 0 when taken, else the seconds until a request of the minute ages out.
--@include now.lua
local rpm = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[1]) >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, math.ceil((tonumber(oldest[2]) + 60000 - now) / 1000))
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 60000)
return 0
