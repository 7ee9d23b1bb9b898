-- append.lua: appends a batch of events, fenced by the attempt token, and publishes it on
-- the stream's live channel for the API processes' stream hubs (one message per batch).
-- It runs for every batch, so it carries no more than it uses.
-- KEYS[1] job record (hash)          KEYS[2] events (stream)
-- ARGV[1] attempt token              ARGV[2] the stream's length cap (approximate MAXLEN)
-- ARGV[3] expiry of a new stream (s)
-- ARGV[4] how many events the stream held before this batch, as the attempt counts them
--         (a batch whose reply was lost and which is sent again is not written twice)
-- ARGV[5] live channel (pub/sub)
-- ARGV[6] PUBLISH, or SPUBLISH on a Redis Cluster (a shard channel: only the node that
--         holds the stream carries it)
-- ARGV[7] the encoded events, one per line (JSON as workers encode it never holds a raw
--         line break; no empty lines)
-- The live message (see `api.hub.parse_live`): the position of the batch's first event and
-- the entry ids, space-separated, on its first line; then the events, one per line.
-- Returns false when fenced out, 0 when the batch was already written, a negative number
-- (minus the events missing) when Redis holds fewer events than the attempt had written
-- (a failover to a replica that had not received them, or a restart that lost the last
-- writes): nothing is written then, the stream cannot go on exactly. Else the batch's
-- length.
local job = redis.call('HMGET', KEYS[1], 'attempt', 'status', 'appended')
if job[1] ~= ARGV[1] or job[2] ~= 'running' then return false end
local held = tonumber(job[3] or '0')
if held > tonumber(ARGV[4]) then return 0 end
if held < tonumber(ARGV[4]) then return held - tonumber(ARGV[4]) end
if ARGV[7] == '' then return 0 end
local ids = {}
local n = held
for event in string.gmatch(ARGV[7], '[^\n]+') do
  n = n + 1
  ids[n - held] = redis.call('XADD', KEYS[2], '*', 'e', event, 'n', n)
end
-- The cap once per batch: the same approximate trim as on every XADD, for less.
redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'appended', n - held)
-- The stream key is born with its first entry; that is when it gets its expiry.
if held == 0 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
redis.call(ARGV[6], ARGV[5],
  (held + 1) .. ' ' .. table.concat(ids, ' ') .. '\n' .. ARGV[7])
return n - held
