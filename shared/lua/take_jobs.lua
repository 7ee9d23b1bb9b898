-- take_jobs.lua: one poll of arq's queue: what arq's worker does with ZRANGEBYSCORE, then
-- for each job WATCH, EXISTS, ZSCORE and MULTI/EXEC. A job is taken (marked in progress)
-- when its time has come and no worker holds it; jobs stay in the queue until they end, so
-- more are looked at than taken. It touches arq's in-progress keys by name (ARGV[5] .. id),
-- so the queue needs a Redis of its own (plain or Sentinel, not a cluster).
-- KEYS[1] the queue (sorted set, scored by when a job is due, ms)
-- ARGV[1] now (ms)                   ARGV[2] how long an in-progress mark lasts (ms)
-- ARGV[3] at most this many jobs to take
-- ARGV[4] at most this many to look at
-- ARGV[5] arq's in-progress key prefix
-- ARGV[6] arq's job key prefix
-- Returns the taken jobs as a flat list: id, score, the job as arq stored it (false when
-- it is gone), id, score, job ...
local taken = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[4])
for _, id in ipairs(due) do
  if #taken >= 3 * tonumber(ARGV[3]) then break end
  local mark = ARGV[5] .. id
  if redis.call('EXISTS', mark) == 0 then
    redis.call('PSETEX', mark, ARGV[2], '1')
    taken[#taken + 1] = id
    taken[#taken + 1] = redis.call('ZSCORE', KEYS[1], id)
    taken[#taken + 1] = redis.call('GET', ARGV[6] .. id)
  end
end
return taken
