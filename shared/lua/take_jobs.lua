-- take_jobs.lua: one poll of arq's queue: what arq's worker does with ZRANGEBYSCORE, then
-- for each job WATCH, EXISTS, ZSCORE and MULTI/EXEC, and what its run of each taken job
-- reads first (the job, its try counted). A job is taken (marked in progress) when its
-- time has come and no worker holds it; jobs stay in the queue until they end, so more are
-- looked at than taken. It touches arq's keys by name (ARGV[5..7] .. id), so the queue
-- needs a Redis of its own (plain or Sentinel, not a cluster).
-- KEYS[1] the queue (sorted set, scored by when a job is due, ms)
-- ARGV[1] now (ms)                   ARGV[2] how long an in-progress mark lasts (ms)
-- ARGV[3] at most this many jobs to take
-- ARGV[4] at most this many to look at
-- ARGV[5] arq's in-progress key prefix
-- ARGV[6] arq's job key prefix
-- ARGV[7] arq's retry key prefix     ARGV[8] how long a try count is kept (s)
-- Returns the taken jobs as a flat list: id, the job as arq stored it (false when it is
-- gone), its try (counting this one), id, job, try ...
local taken = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[4])
for _, id in ipairs(due) do
  if #taken >= 3 * tonumber(ARGV[3]) then break end
  local mark = ARGV[5] .. id
  if redis.call('EXISTS', mark) == 0 then
    redis.call('PSETEX', mark, ARGV[2], '1')
    local tries = ARGV[7] .. id
    taken[#taken + 1] = id
    taken[#taken + 1] = redis.call('GET', ARGV[6] .. id)
    taken[#taken + 1] = redis.call('INCR', tries)
    redis.call('EXPIRE', tries, ARGV[8])
  end
end
return taken
