-- settle_job.lua: included by settle.lua and finish_settle.lua. Defines settle_job(K, A):
-- what an ended job leaves on the queue's Redis, once its finish (or cancel)
-- script has run on the streams' Redis: off the indexes, its concurrency slot and its
-- token reservation given back, its usage charged to its owner. Also run, with no usage,
-- for a job admitted but never created.
-- K[1] leases index               K[2] queued index
-- K[3] the deployment's open jobs
-- K[4] the owner's open jobs      K[5] the owner's usage (hash: total, reserved)
-- K[6] the owner's reservations (hash: job id -> tokens)
-- K[7] the owner's usage by model for the day (hash)
--         (K[4..7] unused when the job has no owner)
-- A[1] job id                     A[2] "1" when the job has an owner
-- A[3] the model the usage is counted under
-- A[4] input tokens               A[5] output tokens
-- A[6] how long a day's usage is kept (s)
local function settle_job(K, A)
  redis.call('ZREM', K[1], A[1])
  redis.call('ZREM', K[2], A[1])
  redis.call('ZREM', K[3], A[1])
  if A[2] == '1' then
    redis.call('ZREM', K[4], A[1])
    local held = redis.call('HGET', K[6], A[1])
    if held then
      redis.call('HDEL', K[6], A[1])
      redis.call('HINCRBY', K[5], 'reserved', -tonumber(held))
    end
    local input, output = tonumber(A[4]), tonumber(A[5])
    if input + output > 0 then
      redis.call('HINCRBY', K[5], 'total', input + output)
      redis.call('HINCRBY', K[7], A[3] .. '|input', input)
      redis.call('HINCRBY', K[7], A[3] .. '|output', output)
      redis.call('HINCRBY', K[7], A[3] .. '|requests', 1)
      redis.call('EXPIRE', K[7], A[6])
    end
  end
end
