-- finish.lua: ends a running job with its terminal event, fenced by the attempt token:
-- stores the output, charges the owner's usage, releases its concurrency slot, starts the
-- retention clock and leaves a tombstone for late readers.
-- KEYS[1] job record (hash)          KEYS[2] events (stream)
-- KEYS[3] tombstone (string)         KEYS[4] leases index    KEYS[5] queued index
-- ARGV[1] attempt token              ARGV[2] the stream's length cap
-- ARGV[3] default retention (s)      ARGV[4] final status
-- ARGV[5] the terminal event (JSON)  ARGV[6] the output (transcript JSON)
-- ARGV[7] tombstone lifetime (s)     ARGV[8] stream id
-- ARGV[9] concurrency key prefix and ARGV[10] the global concurrency key (release_slot)
-- ARGV[11] input tokens              ARGV[12] output tokens
-- ARGV[13] usage key prefix (the owner's usage hash is ARGV[13] .. owner)
-- ARGV[14] live channel
-- ARGV[15] how many events the attempt had written: the terminal event takes the position
--          after them even when Redis lost some of them (readers who saw them get it; a
--          reader from the start meets the gap in the positions)
-- Returns false when fenced out, "done" when already ended, else "finished".
--@include now.lua
--@include release_slot.lua
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return false end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 'done' end
local owner = redis.call('HGET', KEYS[1], 'owner')
release_slot(ARGV[8], owner, ARGV[9], ARGV[10])
local input, output = tonumber(ARGV[11]), tonumber(ARGV[12])
if owner and input + output > 0 then
  local usage = ARGV[13] .. owner
  local model = redis.call('HGET', KEYS[1], 'model')
  redis.call('HINCRBY', usage, model .. '|input', input)
  redis.call('HINCRBY', usage, model .. '|output', output)
  redis.call('HINCRBY', usage, 'total', input + output)
end
local n = math.max(tonumber(redis.call('HGET', KEYS[1], 'appended') or '0'),
  tonumber(ARGV[15])) + 1
redis.call('HSET', KEYS[1], 'appended', n)
local eid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[5], 'n', n)
redis.call('PUBLISH', ARGV[14], eid .. ' ' .. n .. ' ' .. ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'finished_at', now / 1000, 'output', ARGV[6])
redis.call('HDEL', KEYS[1], 'lease_until')
local keep = redis.call('HGET', KEYS[1], 'retention') or ARGV[3]
redis.call('EXPIRE', KEYS[1], keep)
redis.call('EXPIRE', KEYS[2], keep)
redis.call('SET', KEYS[3], owner or '1', 'EX', ARGV[7])
redis.call('ZREM', KEYS[4], ARGV[8])
redis.call('ZREM', KEYS[5], ARGV[8])
return 'finished'
