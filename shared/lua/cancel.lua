-- cancel.lua: a client cancels a job. A queued job ends here with a cancelled finish; a
-- running one is flagged (its worker hears of it on the cancel channel and at each lease
-- renewal); an ended one is left as it is. The caller settles what lives on the queue's
-- Redis (the queued index, the concurrency slot).
-- KEYS[1] job record (hash)          KEYS[2] events (stream)
-- KEYS[3] tombstone (string)
-- ARGV[1] the cancelled finish event (JSON)
-- ARGV[2] the stream's length cap    ARGV[3] default retention (s)
-- ARGV[4] the output (transcript JSON)
-- ARGV[5] tombstone lifetime (s)     ARGV[6] live channel
-- ARGV[7] PUBLISH, or SPUBLISH on a Redis Cluster
-- Returns false when there is no such job, {"cancelled", owner} (owner empty when none),
-- or {status} with the status it was left in.
--@include now.lua
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'queued' then
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  local n = redis.call('HINCRBY', KEYS[1], 'appended', 1)
  local eid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1], 'n', n)
  redis.call(ARGV[7], ARGV[6], n .. ' ' .. eid .. '\n' .. ARGV[1])  -- as append.lua
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', now / 1000,
    'output', ARGV[4], 'cancel', '1')
  local keep = redis.call('HGET', KEYS[1], 'retention') or ARGV[3]
  redis.call('EXPIRE', KEYS[1], keep)
  redis.call('EXPIRE', KEYS[2], keep)
  redis.call('SET', KEYS[3], owner ~= '' and owner or '1', 'EX', ARGV[5])
  return {'cancelled', owner}
end
if status == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return {status}
