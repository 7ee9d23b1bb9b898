-- create_job.lua: creates a queued job record (a generation, or an asset task). The
-- queued index (on the queue's Redis) is kept by the caller.
-- KEYS[1] job record (hash)
-- ARGV[1] stream id                  ARGV[2] surface ("task" for asset tasks)
-- ARGV[3] public model name          ARGV[4] canonical request (JSON)
-- ARGV[5] render options (JSON)      ARGV[6] expiry of the record until the job ends (s)
-- ARGV[7] owner (API key id)         ARGV[8] retention once it ends (s)
-- ARGV[9] the stream's live channel  ARGV[10] NUMSUB, or SHARDNUMSUB on a cluster
--   (both optional)
-- Returns how many connections listen to the live channel as the record is made (0
-- without ARGV[9], or where Redis keeps PUBSUB from scripts): a reader subscribed before
-- this gets every event of the stream from that channel.
--@include now.lua
redis.call('HSET', KEYS[1], 'status', 'queued', 'surface', ARGV[2], 'model', ARGV[3],
  'created_at', now / 1000, 'queued_at', now, 'request', ARGV[4], 'render', ARGV[5],
  'owner', ARGV[7], 'retention', ARGV[8])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if not ARGV[9] then return 0 end
local counted = redis.pcall('PUBSUB', ARGV[10], ARGV[9])
if type(counted) ~= 'table' or counted.err then return 0 end
return counted[2]
