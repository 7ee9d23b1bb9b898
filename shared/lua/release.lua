-- release.lua: a worker shutting down hands back a job that emitted nothing: it is queued
-- again for another worker. The indexes (on the queue's Redis) are kept by the caller.
-- KEYS[1] job record (hash)          KEYS[2] events (stream)
-- ARGV[1] attempt token
-- Returns 1 when handed back, else 0 (fenced out, or events were emitted).
--@include now.lua
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
if redis.call('XLEN', KEYS[2]) > 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', now)
redis.call('HDEL', KEYS[1], 'attempt', 'lease_until', 'started_at', 'worker')
return 1
