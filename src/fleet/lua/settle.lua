-- Settle a request: release its hold (if it still has one), bill the real cost to the
-- account and to the key, count it in the key's usage.
-- KEYS: 1 the account's month spend, 2 its hour spend, 3 its holds, 4 its reserved total,
--       5 the key's month spend, 6 its hour spend (read only by the carry-over), 7 its holds,
--       8 its reserved total, 9 settlement marker, 10 the key's month usage (a hash of
--       counters by lane and model).
-- ARGV: 1 the hold (`id|amount`, '' for none), 2 cost, 3 the account's hard cap ('' for
--       none), 4 the key's monthly limit ('' for none; the hold is under the key too when
--       given), 5 carry flag (see `carry` in lib.lua), 6 lane TAB model, 7 input tokens,
--       8 cached input tokens, 9 output tokens, 10 when the month's keys expire (unix s),
--       11 how long the marker lives (s).
-- Returns what was billed. Settling twice (a replay whose first answer was lost) bills once:
-- the marker remembers the first settlement.
local done = redis.call('GET', KEYS[9])
if done then return done end
if ARGV[5] == '1' then carry(KEYS) end
local state = redis.call('MGET', KEYS[4], KEYS[1], KEYS[8], KEYS[5])
local reserved = big(state[1])
local key_reserved = big(state[3])
local limited = ARGV[4] ~= ''
if ARGV[1] ~= '' then
  if redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then
    reserved = sub(reserved, held(ARGV[1]))
    put_reserved(KEYS[4], reserved, nil)
  end
  if limited and redis.call('ZREM', KEYS[7], ARGV[1]) == 1 then
    key_reserved = sub(key_reserved, held(ARGV[1]))
    put_reserved(KEYS[8], key_reserved, nil)
  end
end
local cost = big(ARGV[2])
-- The plan's credit and the key's own limit are hard stops: never bill past either, holding
-- room for the other requests in flight (the provider counting more than the worst case is
-- the gateway's loss).
local function cap_at(limit, spent, holds)
  local room = sub(big(limit), add(big(spent), holds))
  if gt(cost, room) then cost = room end
end
if ARGV[3] ~= '' then cap_at(ARGV[3], state[2], reserved) end
if limited then cap_at(ARGV[4], state[4], key_reserved) end
local billed = str(cost)
-- A key that this settlement creates gets its lifetime (an INCRBY answering the amount itself).
if redis.call('INCRBY', KEYS[1], billed) == tonumber(billed) then
  redis.call('EXPIREAT', KEYS[1], ARGV[10])
end
if redis.call('INCRBY', KEYS[2], billed) == tonumber(billed) then
  redis.call('EXPIRE', KEYS[2], 7200)
end
if redis.call('INCRBY', KEYS[5], billed) == tonumber(billed) then
  redis.call('EXPIREAT', KEYS[5], ARGV[10])
end
local f = ARGV[6] .. '\t'
if redis.call('HINCRBY', KEYS[10], f .. 'n', 1) == 1 then
  redis.call('EXPIREAT', KEYS[10], ARGV[10])
end
redis.call('HINCRBY', KEYS[10], f .. 'i', ARGV[7])
redis.call('HINCRBY', KEYS[10], f .. 'c', ARGV[8])
redis.call('HINCRBY', KEYS[10], f .. 'o', ARGV[9])
redis.call('HINCRBY', KEYS[10], f .. '$', billed)
redis.call('SET', KEYS[9], billed, 'EX', ARGV[11])
return billed
