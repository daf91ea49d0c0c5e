-- What every script shares: exact money, holds, the server's clock, and the two checks.
--
-- Exact money in Lua. Amounts are pico-dollars written as decimal strings (Redis keeps
-- them as 64-bit integers), but Lua 5.1 numbers are doubles, exact only below 2^53
-- ($9,007). An amount is therefore split into {millions, units}: both parts stay far
-- below 2^53 for any amount a u64 holds, and every sum and comparison is exact.
local M = 1000000

local function big(s)
  if not s or s == '' then return {0, 0} end
  local n = #s
  if n <= 6 then return {0, tonumber(s)} end
  return {tonumber(string.sub(s, 1, n - 6)), tonumber(string.sub(s, n - 5))}
end

local function add(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= M then hi, lo = hi + 1, lo - M end
  return {hi, lo}
end

-- a - b, or zero when b is larger.
local function sub(a, b)
  local hi, lo = a[1] - b[1], a[2] - b[2]
  if lo < 0 then hi, lo = hi - 1, lo + M end
  if hi < 0 then return {0, 0} end
  return {hi, lo}
end

local function gt(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end

local function str(a)
  if a[1] == 0 then return string.format('%d', a[2]) end
  return string.format('%d%06d', a[1], a[2])
end

-- Release one hold: drop it from the holds hash and the expiry index, take its amount off
-- the account's reserved total. Returns the amount, or false when the hold was gone.
local function release(holds, expiry, reserved, id)
  local amount = redis.call('HGET', holds, id)
  redis.call('ZREM', expiry, id)
  if not amount then return false end
  redis.call('HDEL', holds, id)
  local left = sub(big(redis.call('GET', reserved)), big(amount))
  if left[1] == 0 and left[2] == 0 then
    redis.call('DEL', reserved)
  else
    redis.call('SET', reserved, str(left), 'KEEPTTL')
  end
  return amount
end

-- Release holds past their expiry (`now` in ms), oldest first, at most 64 per call (the rest go on the
-- next call, so one call's work stays bounded).
local function sweep(holds, expiry, reserved, now)
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 64)
  for _, id in ipairs(gone) do release(holds, expiry, reserved, id) end
end

-- The server's clock in milliseconds: one clock for every gateway of the fleet.
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Admit against per-minute limits, every one or none: GCRA, one theoretical arrival time per
-- limit, in microseconds of the server's clock (one clock for the whole fleet). A limit of N
-- admits N at once, then one every 60/N s. `args[first..last]` are triples of limit name,
-- per minute, cost. Returns nil when admitted, else {limit name, microseconds to wait}.
local function gcra(key, args, first, last)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local minute = 60000000
  local set = {}
  local latest = now
  for i = first, last, 3 do
    local tat = tonumber(redis.call('HGET', key, args[i]) or '0')
    if tat < now then tat = now end
    local next_tat = tat + tonumber(args[i + 2]) * minute / tonumber(args[i + 1])
    local allowed = now + minute
    if next_tat > allowed then
      return {args[i], string.format('%d', math.ceil(next_tat - allowed))}
    end
    set[#set + 1] = args[i]
    set[#set + 1] = string.format('%.3f', next_tat)
    if next_tat > latest then latest = next_tat end
  end
  if #set == 0 then return nil end
  redis.call('HSET', key, unpack(set))
  -- A key at rest has nothing to remember: the state goes once every limit has refilled.
  redis.call('PEXPIRE', key, math.ceil((latest - now) / 1000) + 1000)
  return nil
end

-- Reserve a worst case if it fits under every limit of the account.
-- keys[1..5]: month spend, hour spend, holds (id -> amount), hold expiry (id by the
-- millisecond it expires), reserved total. args[a..]: amount, hold id, hold lifetime (s),
-- hourly limit ('' for none), then the monthly caps in the order the gateway checks them.
-- Returns {'ok'}, {'cap', index of the cap, committed}, or {'hour', hour spend + reserved}.
local function reserve(keys, args, a)
  local now = server_now()
  sweep(keys[3], keys[4], keys[5], now)
  local amount = big(args[a])
  local reserved = big(redis.call('GET', keys[5]))
  local committed = add(big(redis.call('GET', keys[1])), reserved)
  local after = add(committed, amount)
  for i = a + 4, #args do
    if gt(after, big(args[i])) then return {'cap', tostring(i - a - 3), str(committed)} end
  end
  if args[a + 3] ~= '' then
    local hour = add(big(redis.call('GET', keys[2])), reserved)
    if gt(add(hour, amount), big(args[a + 3])) then return {'hour', str(hour)} end
  end
  local ttl = tonumber(args[a + 2])
  redis.call('HSET', keys[3], args[a + 1], args[a])
  redis.call('ZADD', keys[4], now + ttl * 1000, args[a + 1])
  redis.call('SET', keys[5], str(add(reserved, amount)))
  -- Every hold has the same lifetime, so the newest expires last: the bookkeeping lives a
  -- minute longer, then goes with it.
  for k = 3, 5 do redis.call('EXPIRE', keys[k], ttl + 60) end
  return {'ok'}
end
