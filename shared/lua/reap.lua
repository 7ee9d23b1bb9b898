-- reap.lua: the reaper's look at one job whose lease ran out, or which has waited too long
-- in the queue. Jobs that emitted nothing go back to the queue (a bounded number of
-- times); the others are taken over with the reaper's own attempt token, so it can end
-- them visibly. The caller keeps the indexes (on the queue's Redis) in step.
-- KEYS[1] job record (hash)          KEYS[2] events (stream)
-- ARGV[1] stream id                  ARGV[2] the reaper's attempt token
-- ARGV[3] lease length (ms)          ARGV[4] the longest a job may stay queued (ms)
-- ARGV[5] how many times a job may be queued again
-- ARGV[6] Redis' time when the sweep began (ms): leases and queue ages are judged as of
--         then, or now if earlier, so a look that reaches Redis late (sent just before
--         Redis stalled, run after) cannot find leases that ran out while nobody could
--         renew them
-- Returns {outcome, detail, time (ms)}:
--   "gone", "ended": nothing to do (detail and time 0);
--   "alive": its lease runs to `time`;
--   "waiting": queued since `time`, not for too long;
--   "requeued": queued again at `time`, `detail` times so far;
--   "cancelled", "lost", "expired": the reaper now holds the attempt (its lease runs to
--   `time`) and must end the stream after its `detail` events.
--@include now.lua
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'gone', 0, 0} end
local judged = math.min(now, tonumber(ARGV[6]))
local lease = now + tonumber(ARGV[3])
if status == 'running' then
  local until_ = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if until_ > judged then return {'alive', 0, until_} end
  local appended = redis.call('HGET', KEYS[1], 'appended') or '0'
  if redis.call('HGET', KEYS[1], 'cancel') == '1' then
    -- Its client asked to cancel it: it ends cancelled, whatever became of its worker.
    redis.call('HSET', KEYS[1], 'attempt', ARGV[2], 'lease_until', lease)
    return {'cancelled', appended, lease}
  end
  local requeues = tonumber(redis.call('HGET', KEYS[1], 'requeues') or '0')
  if redis.call('XLEN', KEYS[2]) == 0 and requeues < tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', now)
    redis.call('HDEL', KEYS[1], 'attempt', 'lease_until', 'started_at', 'worker')
    redis.call('HINCRBY', KEYS[1], 'requeues', 1)
    return {'requeued', tostring(requeues + 1), now}
  end
  redis.call('HSET', KEYS[1], 'attempt', ARGV[2], 'lease_until', lease)
  return {'lost', appended, lease}
end
if status == 'queued' then
  local queued_at = tonumber(redis.call('HGET', KEYS[1], 'queued_at') or '0')
  if judged - queued_at < tonumber(ARGV[4]) then return {'waiting', 0, queued_at} end
  redis.call('HSET', KEYS[1], 'status', 'running', 'attempt', ARGV[2], 'lease_until', lease,
    'started_at', now / 1000)
  return {'expired', redis.call('HGET', KEYS[1], 'appended') or '0', lease}
end
return {'ended', 0, 0}
