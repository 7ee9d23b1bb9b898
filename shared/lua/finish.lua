-- finish.lua: ends a running job (see finish_job.lua, whose K and A are this script's KEYS
-- and ARGV). The caller then settles what lives on the queue's Redis (indexes,
-- concurrency slot, usage) with what this returns; on one Redis, finish_settle.lua does
-- both at once.
--@include now.lua
--@include finish_job.lua
return finish_job(KEYS, ARGV)
