-- route_fail.lua: counts a failure of one deployment of a model group and cools the
-- deployment down once it has failed `allowed_fails` times within the window, or at once
-- for as long as the upstream asked (a Retry-After). Every worker reads the cooldown.
-- KEYS[1] the deployment's failure counter     KEYS[2] the deployment's cooldown
-- ARGV[1] allowed_fails                         ARGV[2] the failure window (ms)
-- ARGV[3] the cooldown (ms)                     ARGV[4] the upstream's Retry-After (ms), 0: none
-- Returns the cooldown set (ms), 0 when the deployment stays in use.
local fails = redis.call('INCR', KEYS[1])
if fails == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local cooldown = 0
if fails >= tonumber(ARGV[1]) then cooldown = tonumber(ARGV[3]) end
if tonumber(ARGV[4]) > cooldown then cooldown = tonumber(ARGV[4]) end
if cooldown > 0 then
  redis.call('SET', KEYS[2], fails, 'PX', cooldown)
  redis.call('DEL', KEYS[1])
end
return cooldown
