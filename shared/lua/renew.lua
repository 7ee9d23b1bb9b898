-- renew.lua: extends a running attempt's lease. The lease index (on the queue's Redis) is
-- kept by the caller.
-- KEYS[1] job record (hash)
-- ARGV[1] attempt token              ARGV[2] lease length (ms)
-- Returns {owned (1/0), ms since a reader last looked at the stream, cancel flag, the new
-- lease's end (ms)}.
--@include now.lua
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return {0, 0, '0', 0} end
local lease = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until', lease)
return {1, now - tonumber(redis.call('HGET', KEYS[1], 'reader_seen') or now),
  redis.call('HGET', KEYS[1], 'cancel') or '0', lease}
