-- Admit one request against every per-minute limit of a key at once, or against none.
-- KEYS: the key's rate state (a hash: limit name -> arrival time).
-- ARGV: triples of limit name, per minute, cost.
-- Returns 'ok', or {limit name, microseconds until this request would fit}.
local refused = gcra(KEYS[1], ARGV, 1, #ARGV)
if refused then return refused end
return 'ok'
