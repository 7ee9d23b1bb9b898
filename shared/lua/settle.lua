-- settle.lua: what an ended job leaves on the queue's Redis, once its finish (or cancel)
-- script has run on the streams' Redis: off the indexes, its concurrency slot and its
-- token reservation given back, its usage charged to its owner. Also run, with no usage,
-- for a job admitted but never created.
-- KEYS[1] leases index               KEYS[2] queued index
-- KEYS[3] the deployment's open jobs
-- KEYS[4] the owner's open jobs      KEYS[5] the owner's usage (hash: total, reserved)
-- KEYS[6] the owner's reservations (hash: job id -> tokens)
-- KEYS[7] the owner's usage by model for the day (hash)
--         (KEYS[4..7] unused when the job has no owner)
-- ARGV[1] job id                     ARGV[2] "1" when the job has an owner
-- ARGV[3] the model the usage is counted under
-- ARGV[4] input tokens               ARGV[5] output tokens
-- ARGV[6] how long a day's usage is kept (s)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  local held = redis.call('HGET', KEYS[6], ARGV[1])
  if held then
    redis.call('HDEL', KEYS[6], ARGV[1])
    redis.call('HINCRBY', KEYS[5], 'reserved', -tonumber(held))
  end
  local input, output = tonumber(ARGV[4]), tonumber(ARGV[5])
  if input + output > 0 then
    redis.call('HINCRBY', KEYS[5], 'total', input + output)
    redis.call('HINCRBY', KEYS[7], ARGV[3] .. '|input', input)
    redis.call('HINCRBY', KEYS[7], ARGV[3] .. '|output', output)
    redis.call('HINCRBY', KEYS[7], ARGV[3] .. '|requests', 1)
    redis.call('EXPIRE', KEYS[7], ARGV[6])
  end
end
