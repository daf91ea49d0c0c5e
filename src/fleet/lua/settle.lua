-- Settle a request: release its hold (if it still has one), bill the real cost, count it.
-- KEYS: 1 month spend, 2 hour spend, 3 holds, 4 reserved total, 5 settlement marker,
--       6 month usage (a hash of counters by lane and model).
-- ARGV: 1 the hold (`id|amount`, '' for none), 2 cost, 3 hard cap ('' for none),
--       4 lane TAB model, 5 input tokens, 6 cached input tokens, 7 output tokens,
--       8 when the month's keys expire (unix s), 9 how long the marker lives (s).
-- Returns what was billed. Settling twice (a replay whose first answer was lost) bills once:
-- the marker remembers the first settlement.
local state = redis.call('MGET', KEYS[5], KEYS[4], KEYS[1])
if state[1] then return state[1] end
local reserved = big(state[2])
if ARGV[1] ~= '' and redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then
  reserved = sub(reserved, held(ARGV[1]))
  put_reserved(KEYS[4], reserved, nil)
end
local cost = big(ARGV[2])
if ARGV[3] ~= '' then
  -- The plan's credit is a hard stop: never bill past it, holding room for the other
  -- requests in flight (the provider counting more than the worst case is the gateway's loss).
  local room = sub(big(ARGV[3]), add(big(state[3]), reserved))
  if gt(cost, room) then cost = room end
end
local billed = str(cost)
-- A key that this settlement creates gets its lifetime (an INCRBY answering the amount itself).
if redis.call('INCRBY', KEYS[1], billed) == tonumber(billed) then
  redis.call('EXPIREAT', KEYS[1], ARGV[8])
end
if redis.call('INCRBY', KEYS[2], billed) == tonumber(billed) then
  redis.call('EXPIRE', KEYS[2], 7200)
end
local f = ARGV[4] .. '\t'
if redis.call('HINCRBY', KEYS[6], f .. 'n', 1) == 1 then
  redis.call('EXPIREAT', KEYS[6], ARGV[8])
end
redis.call('HINCRBY', KEYS[6], f .. 'i', ARGV[5])
redis.call('HINCRBY', KEYS[6], f .. 'c', ARGV[6])
redis.call('HINCRBY', KEYS[6], f .. 'o', ARGV[7])
redis.call('HINCRBY', KEYS[6], f .. '$', billed)
redis.call('SET', KEYS[5], billed, 'EX', ARGV[9])
return billed
