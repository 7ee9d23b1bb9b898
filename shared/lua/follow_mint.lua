-- follow_mint.lua: keep one more follow token for a stream, unless it has its fill.
-- KEYS[1] the stream's follow tokens (hash: token digest -> when it expires, Unix s)
-- KEYS[2] the job record (hash): the tokens last at least as long as it does (a token
--         is only ever honoured together with its stream's record, so never longer)
-- ARGV[1] the new token's digest     ARGV[2] how many tokens a stream may have
-- ARGV[3] the longest a stream can still run and then be kept (s)
-- ARGV[4] the token's own lifetime (s): it expires then, or with the stream if sooner
-- Returns the tokens' lifetime in seconds, or 0 when the stream has its fill.
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local ttl = math.max(redis.call('TTL', KEYS[2]), tonumber(ARGV[3]))
local lifetime = math.min(ttl, tonumber(ARGV[4]))
local now = redis.call('TIME')
-- To the microsecond: whole seconds would cut up to a second off the token's lifetime.
local expires = tonumber(now[1]) + tonumber(now[2]) / 1000000 + lifetime
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.6f', expires))
redis.call('EXPIRE', KEYS[1], ttl)
return lifetime
