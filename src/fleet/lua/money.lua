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
