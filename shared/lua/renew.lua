-- renew.lua: extends a running attempt's lease.
-- KEYS[1] job record (hash)          KEYS[2], KEYS[3], KEYS[5] unused
-- KEYS[4] leases index (sorted set, lease expiry ms)
-- ARGV[1] attempt token              ARGV[2] lease length (ms)
-- ARGV[3] stream id
-- Returns {owned (1/0), ms since a reader last looked at the stream, cancel flag}.
--@include now.lua
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return {0, 0, '0'} end
local lease = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until', lease)
redis.call('ZADD', KEYS[4], lease, ARGV[3])
return {1, now - tonumber(redis.call('HGET', KEYS[1], 'reader_seen') or now),
  redis.call('HGET', KEYS[1], 'cancel') or '0'}
