-- render_state_read.lua: what a resumed tail needs to bring a stateful renderer up to its
-- resume point, in one round trip: the latest snapshot of the renderer's state taken
-- before the point, and the entries after that snapshot up to and including the point
-- (every entry up to the point when there is no snapshot).
-- KEYS[1] the snapshots (sorted set, see keys.render_state_key)    KEYS[2] events (stream)
-- ARGV[1] the resume point's position   ARGV[2] its entry id
-- Returns {snapshot member or nil, entries}.
local snap = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '-inf', 'LIMIT', 0, 1)[1]
local first = '-'
if snap then first = '(' .. string.match(snap, '^%d+ (%S+) ') end
return {snap or false, redis.call('XRANGE', KEYS[2], first, ARGV[2])}
