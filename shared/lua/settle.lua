-- settle.lua: what an ended job leaves on the queue's Redis (see settle_job.lua, whose K
-- and A are this script's KEYS and ARGV).
--@include settle_job.lua
return settle_job(KEYS, ARGV)
