-- render_state_save.lua: keeps a snapshot of a wire format's renderer state along a stream
-- (see keys.render_state_key), unless the set already holds one within `spacing`
-- positions of it: however many tails of the stream write, it holds about one snapshot
-- per `spacing` events. The set lives as long as the stream: each write gives it the
-- stream's expiry.
-- KEYS[1] the snapshots (sorted set)    KEYS[2] events (stream)
-- ARGV[1] the position of the entry the state was taken after
-- ARGV[2] the member, `<position> <entry id> <state>`
-- ARGV[3] spacing (positions)           ARGV[4] expiry (s) for a stream that has none
-- Returns 1 when kept, 0 when not (the stream is gone, or a snapshot is near).
local ttl = redis.call('PTTL', KEYS[2])
if ttl == -2 then return 0 end
local at = tonumber(ARGV[1])
local near = tonumber(ARGV[3])
if redis.call('ZCOUNT', KEYS[1], '(' .. (at - near), '(' .. (at + near)) > 0 then return 0 end
redis.call('ZADD', KEYS[1], at, ARGV[2])
if ttl == -1 then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
else
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
