-- settle.lua: what an ended job leaves on the queue's Redis, once its finish (or cancel)
-- script has run on the streams' Redis: off the indexes, its concurrency slot given back,
-- its usage charged to its owner.
-- KEYS[1] leases index               KEYS[2] queued index
-- KEYS[3] the deployment's open generations
-- KEYS[4] the owner's open generations   KEYS[5] the owner's usage (hash)
--         (both unused when the job has no owner)
-- ARGV[1] stream id                  ARGV[2] "1" when the job has an owner
-- ARGV[3] public model name          ARGV[4] input tokens
-- ARGV[5] output tokens
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  local input, output = tonumber(ARGV[4]), tonumber(ARGV[5])
  if input + output > 0 then
    redis.call('HINCRBY', KEYS[5], ARGV[3] .. '|input', input)
    redis.call('HINCRBY', KEYS[5], ARGV[3] .. '|output', output)
    redis.call('HINCRBY', KEYS[5], 'total', input + output)
  end
end
