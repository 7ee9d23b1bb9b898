-- reap.lua: the reaper's look at one job whose lease ran out, or which has waited too long
-- in the queue. Jobs that emitted nothing go back to the queue (a bounded number of
-- times); the others are taken over with the reaper's own attempt token, so it can end
-- them visibly.
-- KEYS[1] job record (hash)          KEYS[2] events (stream)
-- KEYS[3] tombstone (unused)         KEYS[4] leases index    KEYS[5] queued index
-- ARGV[1] stream id                  ARGV[2] the reaper's attempt token
-- ARGV[3] lease length (ms)          ARGV[4] the longest a job may stay queued (ms)
-- ARGV[5] how many times a job may be queued again
-- Returns {outcome[, detail]}: "gone", "alive", "waiting", "ended", "requeued" (with the
-- requeue count), or "cancelled", "lost", "expired" (with the events appended so far: the
-- reaper now holds the attempt and must end the stream).
--@include now.lua
local id = ARGV[1]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZREM', KEYS[5], id)
  return {'gone'}
end
local lease = now + tonumber(ARGV[3])
if status == 'running' then
  local until_ = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if until_ > now then
    redis.call('ZADD', KEYS[4], until_, id)
    return {'alive'}
  end
  if redis.call('HGET', KEYS[1], 'cancel') == '1' then
    -- Its client asked to cancel it: it ends cancelled, whatever became of its worker.
    redis.call('HSET', KEYS[1], 'attempt', ARGV[2], 'lease_until', lease)
    redis.call('ZADD', KEYS[4], lease, id)
    return {'cancelled', redis.call('HGET', KEYS[1], 'appended') or '0'}
  end
  local requeues = tonumber(redis.call('HGET', KEYS[1], 'requeues') or '0')
  if redis.call('XLEN', KEYS[2]) == 0 and requeues < tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', now)
    redis.call('HDEL', KEYS[1], 'attempt', 'lease_until', 'started_at', 'worker')
    redis.call('HINCRBY', KEYS[1], 'requeues', 1)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZADD', KEYS[5], now, id)
    return {'requeued', tostring(requeues + 1)}
  end
  redis.call('HSET', KEYS[1], 'attempt', ARGV[2], 'lease_until', lease)
  redis.call('ZADD', KEYS[4], lease, id)
  return {'lost', redis.call('HGET', KEYS[1], 'appended') or '0'}
end
if status == 'queued' then
  local queued_at = tonumber(redis.call('HGET', KEYS[1], 'queued_at') or '0')
  if now - queued_at < tonumber(ARGV[4]) then return {'waiting'} end
  redis.call('HSET', KEYS[1], 'status', 'running', 'attempt', ARGV[2], 'lease_until', lease,
    'started_at', now / 1000)
  redis.call('ZREM', KEYS[5], id)
  redis.call('ZADD', KEYS[4], lease, id)
  return {'expired', redis.call('HGET', KEYS[1], 'appended') or '0'}
end
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[5], id)
return {'ended'}
