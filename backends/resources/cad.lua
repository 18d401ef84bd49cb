-- Compare-and-delete one lockd value, atomically on the server, and report the state if not.
--
-- KEYS[1]  the value hash: fields value, ver
-- ARGV[1]  the expected version (never empty)
-- KEYS[2]  optional: the sorted set indexing the store's keys (see cas.lua), with
-- ARGV[2]  this key's name in it, removed with the key
--
-- Returns {1} when it deleted the key; when the version did not match, {0, current value,
-- current version}, or {0} if the key is absent. The version is read exactly as cas.lua
-- reads it (a hash from before lockd 0.2 has gen and rev instead of ver).

local current = redis.call('HMGET', KEYS[1], 'value', 'ver', 'gen', 'rev')
local version = current[2]
if not version and current[3] then
    version = current[3] .. ':' .. current[4]
end

if not version then
    return {0}
end
if version ~= ARGV[1] then
    return {0, current[1], version}
end
redis.call('DEL', KEYS[1])
if KEYS[2] then
    redis.call('ZREM', KEYS[2], ARGV[2])
end
return {1}
