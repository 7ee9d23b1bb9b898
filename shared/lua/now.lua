-- now.lua: included first by scripts that need the time. Redis' own clock in ms, so
-- leases and queue ages never depend on the clocks of API or worker hosts.
local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)
