-- Delete one lockd value if its version is still the expected one.
--
-- KEYS[1]  the value hash: fields value, gen, rev
-- ARGV[1]  the expected version "gen:rev"
--
-- Returns 1 when deleted, 0 when the version did not match. The generation counter key
-- is kept on purpose: a later create must start a new generation (see cas.lua).

local current = redis.call('HMGET', KEYS[1], 'gen', 'rev')
if not current[1] or (current[1] .. ':' .. current[2]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[1])
return 1
