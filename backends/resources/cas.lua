-- Compare-and-set one lockd value, atomically on the server, and report the state after.
--
-- KEYS[1]  the value hash: fields value, gen, rev
-- KEYS[2]  the key's generation counter (same {hash tag}, so same cluster slot)
-- ARGV[1]  the expected version "gen:rev", or "" to create only if absent
-- ARGV[2]  the new value (bytes)
--
-- Returns {1, new version "gen:rev"} when it stored the value; when the version did not
-- match, {0, current value, current version}, or {0} if the key is absent. Reporting the
-- current state spares the caller a second round trip to read it after a lost race.
-- A version is "gen:rev": rev counts writes, gen counts creations. gen survives a delete,
-- so a key deleted and created again never repeats an old version (no ABA for a writer
-- that read before the delete).

local current = redis.call('HMGET', KEYS[1], 'value', 'gen', 'rev')

local function lost()
    if not current[2] then
        return {0}
    end
    return {0, current[1], current[2] .. ':' .. current[3]}
end

if ARGV[1] == '' then
    if current[2] then
        return lost()
    end
    local gen = redis.call('INCR', KEYS[2])
    redis.call('HSET', KEYS[1], 'value', ARGV[2], 'gen', gen, 'rev', 1)
    return {1, gen .. ':1'}
end

if not current[2] or (current[2] .. ':' .. current[3]) ~= ARGV[1] then
    return lost()
end
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'value', ARGV[2])
return {1, current[2] .. ':' .. rev}
