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

-- Holds are members `id|amount` of a sorted set, scored by the millisecond they expire.
local function held(member)
  return big(string.match(member, '|(%d+)$'))
end

-- The account's reserved total, written back (gone when zero). Its lifetime follows the
-- holds (`ttl`), or stays as it was.
local function put_reserved(key, amount, ttl)
  if amount[1] == 0 and amount[2] == 0 then
    redis.call('DEL', key)
  elseif ttl then
    redis.call('SET', key, str(amount), 'EX', ttl)
  else
    redis.call('SET', key, str(amount), 'KEEPTTL')
  end
end

-- Drop holds past their expiry (`now` in ms), oldest first, at most 64 per call (the rest go
-- on the next call, so one call's work stays bounded). Returns `reserved` without them.
local function sweep(holds, reserved, now)
  local gone = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, 64)
  if #gone == 0 then return reserved, false end
  for _, member in ipairs(gone) do reserved = sub(reserved, held(member)) end
  redis.call('ZREM', holds, unpack(gone))
  return reserved, true
end

-- The server's clock in milliseconds: one clock for every gateway of the fleet.
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Admit against per-minute limits, every one or none: GCRA, one theoretical arrival time per
-- limit, in microseconds of the server's clock (one clock for the whole fleet). A limit of N
-- admits N at once, then one every 60/N s. `args[first..last]` are triples of limit name,
-- per minute, cost. Returns nil when admitted, else {limit name, microseconds to wait}; and
-- the server's time in ms.
local function gcra(key, args, first, last)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local now_ms = math.floor(now / 1000)
  local names = {}
  for i = first, last, 3 do names[#names + 1] = args[i] end
  if #names == 0 then return nil, now_ms end
  local tats = redis.call('HMGET', key, unpack(names))
  local minute = 60000000
  local set = {}
  local latest = now
  for j, name in ipairs(names) do
    local i = first + 3 * (j - 1)
    local tat = tonumber(tats[j] or '0')
    if tat < now then tat = now end
    local next_tat = tat + tonumber(args[i + 2]) * minute / tonumber(args[i + 1])
    local allowed = now + minute
    if next_tat > allowed then
      return {name, string.format('%d', math.ceil(next_tat - allowed))}, now_ms
    end
    set[#set + 1] = name
    set[#set + 1] = string.format('%.3f', next_tat)
    if next_tat > latest then latest = next_tat end
  end
  redis.call('HSET', key, unpack(set))
  -- A key at rest has nothing to remember: the state goes once every limit has refilled.
  redis.call('PEXPIRE', key, math.ceil((latest - now) / 1000) + 1000)
  return nil, now_ms
end

-- Reserve a worst case if it fits under every limit of the account.
-- keys[1..4]: month spend, hour spend, holds, reserved total. args[a..]: amount, hold id,
-- hold lifetime (s), hourly limit ('' for none), then the monthly caps in the order the
-- gateway checks them. `now`: the server's time in ms.
-- Returns {'ok'}, {'cap', index of the cap, committed}, or {'hour', hour spend + reserved}.
local function reserve(keys, args, a, now)
  local state = redis.call('MGET', keys[4], keys[1], keys[2])
  local reserved, swept = sweep(keys[3], big(state[1]), now)
  local amount = big(args[a])
  local committed = add(big(state[2]), reserved)
  local after = add(committed, amount)
  local refused = nil
  for i = a + 4, #args do
    if gt(after, big(args[i])) then
      refused = {'cap', tostring(i - a - 3), str(committed)}
      break
    end
  end
  if not refused and args[a + 3] ~= '' then
    local hour = add(big(state[3]), reserved)
    if gt(add(hour, amount), big(args[a + 3])) then refused = {'hour', str(hour)} end
  end
  if refused then
    if swept then put_reserved(keys[4], reserved, nil) end
    return refused
  end
  local ttl = tonumber(args[a + 2])
  redis.call('ZADD', keys[3], now + ttl * 1000, args[a + 1] .. '|' .. args[a])
  -- Every hold has the same lifetime, so the newest expires last: the bookkeeping lives a
  -- minute longer, then goes with it.
  redis.call('EXPIRE', keys[3], ttl + 60)
  put_reserved(keys[4], add(reserved, amount), ttl + 60)
  return {'ok'}
end
