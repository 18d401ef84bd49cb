-- Compare-and-set one lockd value, atomically on the server.
--
-- KEYS[1]  the value hash: fields value, gen, rev
-- KEYS[2]  the key's generation counter (same {hash tag}, so same cluster slot)
-- ARGV[1]  the expected version "gen:rev", or "" to create only if absent
-- ARGV[2]  the new value (bytes)
--
-- Returns the new version "gen:rev", or nil (false) when the version did not match.
-- A version is "gen:rev": rev counts writes, gen counts creations. gen survives a delete,
-- so a key deleted and created again never repeats an old version (no ABA for a writer
-- that read before the delete).

local current = redis.call('HMGET', KEYS[1], 'gen', 'rev')

if ARGV[1] == '' then
    if current[1] then
        return false
    end
    local gen = redis.call('INCR', KEYS[2])
    redis.call('HSET', KEYS[1], 'value', ARGV[2], 'gen', gen, 'rev', 1)
    return gen .. ':1'
end

if not current[1] or (current[1] .. ':' .. current[2]) ~= ARGV[1] then
    return false
end
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'value', ARGV[2])
return current[1] .. ':' .. rev
