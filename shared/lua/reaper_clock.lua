-- reaper_clock.lua: every reaper's sweep starts here. It tells a Redis that stopped
-- answering (frozen, failing over, unreachable for everyone) from workers that stopped
-- renewing: reapers stamp the clock each sweep, so a stamp much older than a sweep
-- interval means nobody could reach Redis meanwhile. Leases then ran out only because
-- nobody could renew them: every reaper holds off until live workers had a lease period
-- to renew.
-- KEYS[1] the last sweep's stamp (string: ms, Redis' clock)
-- KEYS[2] reaping held until (string: ms, Redis' clock)
-- ARGV[1] a gap longer than this (ms) means Redis was out of reach
-- ARGV[2] how long reaping is then held (ms)
-- Returns {now, held until (0 when reaping may go on)}.
--@include now.lua
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
-- Kept a day, not a lease: a stamp that expired during the very gap it should reveal
-- would hide it (a missing stamp means no reaper has run for a day).
redis.call('SET', KEYS[1], now, 'EX', 86400)
local held = tonumber(redis.call('GET', KEYS[2]) or '0')
if last > 0 and now - last > tonumber(ARGV[1]) then
  held = now + tonumber(ARGV[2])
  redis.call('SET', KEYS[2], held, 'PX', ARGV[2])
end
if held <= now then held = 0 end
return {now, held}
