-- finish.lua: ends a running job with its terminal event, fenced by the attempt token:
-- stores the output, starts the retention clock and leaves a tombstone for late readers.
-- The caller then settles what lives on the queue's Redis (indexes, concurrency slot,
-- usage) with what this returns.
-- KEYS[1] job record (hash)          KEYS[2] events (stream)
-- KEYS[3] tombstone (string)
-- ARGV[1] attempt token              ARGV[2] the stream's length cap
-- ARGV[3] default retention (s)      ARGV[4] final status
-- ARGV[5] the terminal event (JSON)  ARGV[6] the output (transcript JSON)
-- ARGV[7] tombstone lifetime (s)     ARGV[8] live channel
-- ARGV[9] how many events the attempt had written: the terminal event takes the position
--         after them even when Redis lost some of them (readers who saw them get it; a
--         reader from the start meets the gap in the positions)
-- ARGV[10] PUBLISH, or SPUBLISH on a Redis Cluster
-- Returns false when fenced out, {"done"} when already ended, else {"finished", owner,
-- model} (owner empty when the job has none).
--@include now.lua
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return false end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return {'done'} end
local n = math.max(tonumber(redis.call('HGET', KEYS[1], 'appended') or '0'),
  tonumber(ARGV[9])) + 1
redis.call('HSET', KEYS[1], 'appended', n)
local eid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[5], 'n', n)
redis.call(ARGV[10], ARGV[8], eid .. ' ' .. n .. ' ' .. ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'finished_at', now / 1000, 'output', ARGV[6])
redis.call('HDEL', KEYS[1], 'lease_until')
local keep = redis.call('HGET', KEYS[1], 'retention') or ARGV[3]
redis.call('EXPIRE', KEYS[1], keep)
redis.call('EXPIRE', KEYS[2], keep)
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
redis.call('SET', KEYS[3], owner ~= '' and owner or '1', 'EX', ARGV[7])
return {'finished', owner, redis.call('HGET', KEYS[1], 'model') or ''}
