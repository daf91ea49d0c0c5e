-- Admit a request against its per-minute limits, then reserve its worst case: one round trip
-- for an account with both (the rate is spent even when the reservation is refused, as on a
-- single gateway, which checks the rate first).
-- KEYS: the eight of `reserve` (lib.lua), then 9 the key's rate state.
-- ARGV: n, then n/3 triples of limit name, per minute, cost, then the reserve arguments
-- (amount, hold id, hold lifetime, hourly limit, key limit, carry flag, caps).
-- Returns {'rate', limit name, microseconds to wait} or what `reserve` returns.
local n = tonumber(ARGV[1])
local refused, now = gcra(KEYS[9], ARGV, 2, 1 + n)
if refused then return {'rate', refused[1], refused[2]} end
return reserve(KEYS, ARGV, 2 + n, now)
