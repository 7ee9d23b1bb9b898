-- release_slot.lua: included by scripts that end a job. Gives back the owner's concurrency
-- slot and its place in the deployment-wide set. The key names are built here from the
-- owner on the record: key_prefix .. owner (see shared/keys.py `concurrency_key`) and
-- global_key (`GLOBAL_CONCURRENCY_KEY`).
local function release_slot(id, owner, key_prefix, global_key)
  if owner then redis.call('ZREM', key_prefix .. owner, id) end
  redis.call('ZREM', global_key, id)
end
