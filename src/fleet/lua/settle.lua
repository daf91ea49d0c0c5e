-- Settle a request: release its hold (if it still has one), bill the real cost, count it.
-- KEYS: 1 month spend, 2 hour spend, 3 holds, 4 hold expiry, 5 reserved total,
--       6 settlement marker, 7 month usage (a hash of counters by lane and model).
-- ARGV: 1 hold id, 2 cost, 3 hard cap ('' for none), 4 lane TAB model, 5 input tokens,
--       6 cached input tokens, 7 output tokens, 8 when the month's keys expire (unix s),
--       9 how long the marker lives (s).
-- Returns what was billed. Settling twice (a retry whose first answer was lost) bills once:
-- the marker remembers the first settlement.
local done = redis.call('GET', KEYS[6])
if done then return done end
release(KEYS[3], KEYS[4], KEYS[5], ARGV[1])
local cost = big(ARGV[2])
if ARGV[3] ~= '' then
  -- The plan's credit is a hard stop: never bill past it, holding room for the other
  -- requests in flight (the provider counting more than the worst case is the gateway's loss).
  local spent = add(big(redis.call('GET', KEYS[1])), big(redis.call('GET', KEYS[5])))
  local room = sub(big(ARGV[3]), spent)
  if gt(cost, room) then cost = room end
end
local billed = str(cost)
redis.call('INCRBY', KEYS[1], billed)
redis.call('EXPIREAT', KEYS[1], ARGV[8])
redis.call('INCRBY', KEYS[2], billed)
redis.call('EXPIRE', KEYS[2], 7200)
local f = ARGV[4] .. '\t'
redis.call('HINCRBY', KEYS[7], f .. 'n', 1)
redis.call('HINCRBY', KEYS[7], f .. 'i', ARGV[5])
redis.call('HINCRBY', KEYS[7], f .. 'c', ARGV[6])
redis.call('HINCRBY', KEYS[7], f .. 'o', ARGV[7])
redis.call('HINCRBY', KEYS[7], f .. '$', billed)
redis.call('EXPIREAT', KEYS[7], ARGV[8])
redis.call('SET', KEYS[6], billed, 'EX', ARGV[9])
return billed
