-- create_record.lua: included by create_job.lua and create_task.lua: writes a queued job
-- record and puts it on the queued index. Uses the callers' KEYS[1] (job), KEYS[5]
-- (queued index) and ARGV 1-8 (see create_job.lua).
redis.call('HSET', KEYS[1], 'status', 'queued', 'surface', ARGV[2], 'model', ARGV[3],
  'created_at', now / 1000, 'queued_at', now, 'request', ARGV[4], 'render', ARGV[5],
  'owner', ARGV[7], 'retention', ARGV[8])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[5], now, ARGV[1])
