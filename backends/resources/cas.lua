-- Compare-and-set one lockd value, atomically on the server, and report the state after.
--
-- KEYS[1]  the value hash: fields value, ver
-- ARGV[1]  the expected version, or "" to create only if absent
-- ARGV[2]  the new value (bytes)
-- ARGV[3]  the new version: a random token the client made for this write
-- KEYS[2]  optional: the sorted set indexing the store's keys (score 0, by name), with
-- ARGV[4]  this key's name in it; a write adds it, so prefix listing is a ZRANGEBYLEX
--
-- Returns {1} when it stored the value; when the version did not match, {0, current value,
-- current version}, or {0} if the key is absent. Reporting the current state spares the
-- caller a second round trip to read it after a lost race.
--
-- Versions are random tokens, not counters, so a Redis that lost writes (a failover, a
-- restart with appendfsync everysec, a DUMP/RESTORE) never shows a version that another
-- client remembers with a different value. A hash written before lockd 0.2 has gen and
-- rev fields instead; its version reads as "gen:rev", as it did then.

local current = redis.call('HMGET', KEYS[1], 'value', 'ver', 'gen', 'rev')
local version = current[2]
if not version and current[3] then
    version = current[3] .. ':' .. current[4]
end

if (ARGV[1] == '' and version) or (ARGV[1] ~= '' and version ~= ARGV[1]) then
    if not version then
        return {0}
    end
    return {0, current[1], version}
end
if ARGV[1] ~= '' and not version then
    return {0}
end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'ver', ARGV[3])
redis.call('HDEL', KEYS[1], 'gen', 'rev')
if KEYS[2] then
    -- On every write, not only a create: a key an older lockd created joins the index at
    -- its next write (ZADD of a member already there changes nothing).
    redis.call('ZADD', KEYS[2], 0, ARGV[4])
end
return {1}
