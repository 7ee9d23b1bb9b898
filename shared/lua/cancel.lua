-- cancel.lua: a client cancels a job. A queued job ends here with a cancelled finish; a
-- running one is flagged (its worker hears of it on the cancel channel and at each lease
-- renewal); an ended one is left as it is.
-- KEYS[1] job record (hash)          KEYS[2] events (stream)
-- KEYS[3] tombstone (string)         KEYS[4] leases index (unused)
-- KEYS[5] queued index
-- ARGV[1] the cancelled finish event (JSON)
-- ARGV[2] the stream's length cap    ARGV[3] default retention (s)
-- ARGV[4] the output (transcript JSON)
-- ARGV[5] tombstone lifetime (s)     ARGV[6] stream id
-- ARGV[7] concurrency key prefix and ARGV[8] the global concurrency key (release_slot)
-- ARGV[9] live channel
-- Returns false when there is no such job, "cancelled", or the status it was left in.
--@include now.lua
--@include release_slot.lua
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'queued' then
  local owner = redis.call('HGET', KEYS[1], 'owner')
  release_slot(ARGV[6], owner, ARGV[7], ARGV[8])
  local n = redis.call('HINCRBY', KEYS[1], 'appended', 1)
  local eid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1], 'n', n)
  redis.call('PUBLISH', ARGV[9], eid .. ' ' .. n .. ' ' .. ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', now / 1000,
    'output', ARGV[4], 'cancel', '1')
  local keep = redis.call('HGET', KEYS[1], 'retention') or ARGV[3]
  redis.call('EXPIRE', KEYS[1], keep)
  redis.call('EXPIRE', KEYS[2], keep)
  redis.call('SET', KEYS[3], owner or '1', 'EX', ARGV[5])
  redis.call('ZREM', KEYS[5], ARGV[6])
  return 'cancelled'
end
if status == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return status
