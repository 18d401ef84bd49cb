-- Add keys that exist to the index of the store's keys (building it for a store that lockd
-- wrote before it kept one).
--
-- KEYS[1]     the index: a sorted set, score 0, one member per key name
-- KEYS[2..n]  value hashes found by SCAN
-- ARGV[1..]   the key name of KEYS[i + 1], as the index holds it
--
-- Checked here, atomically, rather than trusting the SCAN: a key deleted between the SCAN
-- and this script (cad.lua removed it from the index) must not come back as a name.
-- Returns how many names it added.

local added = 0
for i = 2, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then
        added = added + redis.call('ZADD', KEYS[1], 0, ARGV[i - 1])
    end
end
return added
