-- release.lua: a worker shutting down hands back a job that emitted nothing: it is queued
-- again for another worker.
-- KEYS[1] job record (hash)          KEYS[2] events (stream)
-- KEYS[3] tombstone (unused)         KEYS[4] leases index    KEYS[5] queued index
-- ARGV[1] attempt token              ARGV[2] stream id
-- Returns 1 when handed back, else 0 (fenced out, or events were emitted).
--@include now.lua
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
if redis.call('XLEN', KEYS[2]) > 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', now)
redis.call('HDEL', KEYS[1], 'attempt', 'lease_until', 'started_at', 'worker')
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZADD', KEYS[5], now, ARGV[2])
return 1
