-- Admit one request against every per-minute limit of a key at once, or against none:
-- GCRA, one theoretical arrival time per limit, in microseconds of the server's clock (one
-- clock for the whole fleet). A limit of N admits N at once, then one every 60/N s.
-- KEYS: 1 the key's rate state (a hash: limit name -> arrival time).
-- ARGV: triples of limit name, per minute, cost.
-- Returns 'ok', or {limit name, microseconds until this request would fit}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local minute = 60000000
local set = {}
local last = now
for i = 1, #ARGV, 3 do
  local tat = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tat < now then tat = now end
  local next_tat = tat + tonumber(ARGV[i + 2]) * minute / tonumber(ARGV[i + 1])
  local allowed = now + minute
  if next_tat > allowed then
    return {ARGV[i], string.format('%d', math.ceil(next_tat - allowed))}
  end
  set[#set + 1] = ARGV[i]
  set[#set + 1] = string.format('%.3f', next_tat)
  if next_tat > last then last = next_tat end
end
redis.call('HSET', KEYS[1], unpack(set))
-- A key at rest has nothing to remember: the state goes once every limit has refilled.
redis.call('PEXPIRE', KEYS[1], math.ceil((last - now) / 1000) + 1000)
return 'ok'
