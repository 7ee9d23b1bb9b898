-- claim.lua: a worker takes a job: a queued one, or a running one whose lease ran out (its
-- worker is gone; "lost" when it had emitted events, which the new attempt must not repeat).
-- The lease index (on the queue's Redis) is kept by the caller.
-- KEYS[1] job record (hash)          KEYS[2] events (stream)
-- ARGV[1] stream id                  ARGV[2] the new attempt token
-- ARGV[3] lease length (ms)          ARGV[4] worker id
-- Returns {outcome, status[, cancel flag, events appended, the record as HGETALL]}:
-- outcome "claimed" or "lost" (with the rest; the record holds lease_until), "busy"
-- (another worker holds a live lease) or "done" (ended, or "missing").
--@include now.lua
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'done', 'missing'} end
local outcome = 'claimed'
if status == 'running' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if lease > now then return {'busy', status} end
  if redis.call('XLEN', KEYS[2]) > 0 then outcome = 'lost' end
elseif status ~= 'queued' then
  return {'done', status}
end
local lease = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'running', 'attempt', ARGV[2], 'lease_until', lease,
  'started_at', now / 1000, 'worker', ARGV[4])
if not redis.call('HGET', KEYS[1], 'reader_seen') then
  redis.call('HSET', KEYS[1], 'reader_seen', now)
end
return {outcome, 'running', redis.call('HGET', KEYS[1], 'cancel') or '0',
  redis.call('HGET', KEYS[1], 'appended') or '0', redis.call('HGETALL', KEYS[1])}
