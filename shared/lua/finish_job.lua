-- finish_job.lua: included by finish.lua and finish_settle.lua (after now.lua). Defines
-- finish_job(K, A), which ends a running job with the attempt's last events and its
-- terminal event, fenced by the attempt token: it stores the output, starts the retention
-- clock and leaves a tombstone for late readers.
-- K[1] job record (hash)             K[2] events (stream)
-- K[3] tombstone (string)
-- A[1] attempt token                 A[2] the stream's length cap
-- A[3] default retention (s)         A[4] final status
-- A[5] the terminal event (JSON)     A[6] the output (transcript JSON)
-- A[7] tombstone lifetime (s)        A[8] live channel
-- A[9] how many events the attempt had written (Redis acknowledged them)
-- A[10] PUBLISH, or SPUBLISH on a Redis Cluster
-- A[11] the attempt's events not written yet, one per line (may be empty; no empty
--       lines): they go before the terminal event, in the same message to the readers
-- When Redis holds fewer events than the attempt wrote (a failover or a restart lost
-- some), the unwritten ones are dropped and the terminal event takes the position after
-- what the attempt wrote: readers who saw the lost ones get it, and a reader from the
-- start meets the gap in the positions. (When it holds more, which an attempt whose
-- appends were all answered never meets, they are taken as written already.)
-- Returns false when fenced out, {"done"} when already ended, else {"finished", owner,
-- model} (owner empty when the job has none).
local function finish_job(K, A)
  local job = redis.call('HMGET', K[1], 'attempt', 'status', 'appended', 'retention', 'owner',
    'model')
  if job[1] ~= A[1] then return false end
  if job[2] ~= 'running' then return {'done'} end
  local appended = tonumber(job[3] or '0')
  local held = tonumber(A[9])
  local n = math.max(appended, held)
  local first = n + 1
  local ids = {}
  local events = A[5]
  if appended == held and A[11] ~= '' then
    for event in string.gmatch(A[11], '[^\n]+') do
      n = n + 1
      ids[#ids + 1] = redis.call('XADD', K[2], '*', 'e', event, 'n', n)
    end
    events = A[11] .. '\n' .. A[5]
  end
  n = n + 1
  redis.call('HSET', K[1], 'appended', n)
  ids[#ids + 1] = redis.call('XADD', K[2], '*', 'e', A[5], 'n', n)
  -- The cap once, as append.lua does it.
  redis.call('XTRIM', K[2], 'MAXLEN', '~', A[2])
  -- The live message as append.lua makes it.
  redis.call(A[10], A[8], first .. ' ' .. table.concat(ids, ' ') .. '\n' .. events)
  redis.call('HSET', K[1], 'status', A[4], 'finished_at', now / 1000, 'output', A[6])
  redis.call('HDEL', K[1], 'lease_until')
  local keep = job[4] or A[3]
  redis.call('EXPIRE', K[1], keep)
  redis.call('EXPIRE', K[2], keep)
  local owner = job[5] or ''
  redis.call('SET', K[3], owner ~= '' and owner or '1', 'EX', A[7])
  return {'finished', owner, job[6] or ''}
end
