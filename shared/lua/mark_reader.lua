-- mark_reader.lua: notes that someone is reading a stream (the abandon policy cancels
-- streams nobody reads). A job that no longer exists is not brought back.
-- KEYS[1] job record (hash)
--@include now.lua
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'reader_seen', now) end
