-- create_task.lua: creates a queued asset task, unless its idempotency key is held.
-- KEYS 1-5 and ARGV 1-8 as in create_job.lua (ARGV[5] is "{}" for tasks), and:
-- KEYS[6] the idempotency key (string "<task id> <body digest>"; the job key when none came)
-- KEYS[7] the webhook dispatcher's pending index (sorted set)
-- ARGV[9]  "<task id> <body digest>" to store under KEYS[6]; empty when no key came
-- ARGV[10] how long the idempotency key is kept (s)
-- ARGV[11] "1" when the task has a callback (it joins KEYS[7])
-- Returns what the idempotency key already held (nothing is created), or false.
--@include now.lua
if ARGV[9] ~= '' then
  local held = redis.call('GET', KEYS[6])
  if held then return held end
  redis.call('SET', KEYS[6], ARGV[9], 'EX', ARGV[10])
end
if ARGV[11] == '1' then redis.call('ZADD', KEYS[7], now, ARGV[1]) end
--@include create_record.lua
return false
