-- Reserve a request's worst-case cost if it fits under every limit of the account.
-- KEYS: 1 month spend, 2 hour spend, 3 holds (id -> amount), 4 hold expiry (id by the
--       millisecond it expires), 5 reserved total. One account's keys share a hash slot.
-- ARGV: 1 amount, 2 hold id, 3 hold lifetime (s), 4 hourly limit ('' for none),
--       5.. monthly caps, in the order the gateway checks them.
-- Returns {'ok'}, {'cap', index of the cap, committed}, or {'hour', hour spend + reserved}.
local now = server_now()
sweep(KEYS[3], KEYS[4], KEYS[5], now)
local amount = big(ARGV[1])
local reserved = big(redis.call('GET', KEYS[5]))
local committed = add(big(redis.call('GET', KEYS[1])), reserved)
local after = add(committed, amount)
for i = 5, #ARGV do
  if gt(after, big(ARGV[i])) then return {'cap', tostring(i - 4), str(committed)} end
end
if ARGV[4] ~= '' then
  local hour = add(big(redis.call('GET', KEYS[2])), reserved)
  if gt(add(hour, amount), big(ARGV[4])) then return {'hour', str(hour)} end
end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], now + ttl * 1000, ARGV[2])
redis.call('SET', KEYS[5], str(add(reserved, amount)))
-- Every hold has the same lifetime, so the newest expires last: the bookkeeping lives a
-- minute longer, then goes with it.
for k = 3, 5 do redis.call('EXPIRE', KEYS[k], ttl + 60) end
return {'ok'}
