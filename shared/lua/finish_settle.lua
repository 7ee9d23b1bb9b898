-- finish_settle.lua: finish.lua and settle.lua in one script, for a deployment on one
-- Redis (the streams' and the queue's are the same): the job ends and is settled at once,
-- or neither happens.
-- KEYS[1..3] finish_job's K               KEYS[4..10] settle_job's K
-- ARGV[1..11] finish_job's A              ARGV[12..17] settle_job's A
-- Returns what finish_job returns; the settling is done when it returns "finished".
--@include now.lua
--@include finish_job.lua
--@include settle_job.lua
local finished = finish_job({KEYS[1], KEYS[2], KEYS[3]}, {unpack(ARGV, 1, 11)})
if finished and finished[1] == 'finished' then
  settle_job({unpack(KEYS, 4, 10)}, {unpack(ARGV, 12, 17)})
end
return finished
