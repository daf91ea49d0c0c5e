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

-- Before accounts, every key was an account of its own and the fleet kept its month and hour
-- under the key's id. Such a key is now the account `acct_` + its id's random part, whose
-- totals live under the account's id. The first script that meets the account (reserve,
-- settle or standing, called with the carry flag only for such an account) copies a total
-- the account does not have yet but the key has, with the key's remaining lifetime: the
-- month's spend carries over to the account. From then on settle adds to both, so the
-- account's total exists and nothing is copied again. It runs inside the script that reads
-- the totals, so it is atomic: two gateways cannot both carry it, and no request is checked
-- against the empty total in between.
-- keys[1], keys[2]: the account's month and hour spend; keys[5], keys[6]: the key's.
local function carry(keys)
  for i = 1, 2 do
    if redis.call('EXISTS', keys[i]) == 0 then
      local legacy = redis.call('GET', keys[i + 4])
      if legacy then
        local ttl = redis.call('PTTL', keys[i + 4])
        if ttl > 0 then
          redis.call('SET', keys[i], legacy, 'PX', ttl)
        else
          redis.call('SET', keys[i], legacy)
        end
      end
    end
  end
end

-- Reserve a worst case if it fits under every limit of the account, and under the key's own
-- monthly limit when it has one.
-- keys[1..4]: the account's month spend, hour spend, holds, reserved total; keys[5..8]: the
-- key's month spend, hour spend (read only by the carry-over), holds, reserved total.
-- args[a..]: amount, hold id, hold lifetime (s), hourly limit ('' for none), the key's
-- monthly limit ('' for none), '1' to carry a pre-account key's totals over (else ''), then
-- the monthly caps in the order the gateway checks them. `now`: the server's time in ms.
-- Returns {'ok'}, {'key', the key's committed}, {'cap', index of the cap, committed}, or
-- {'hour', hour spend + reserved}. The key's limit is checked first, as on a single gateway.
-- The hold goes under the account, and under the key too when it has a limit.
local function reserve(keys, args, a, now)
  if args[a + 5] == '1' then carry(keys) end
  local amount = big(args[a])
  local limit = args[a + 4]
  local refused = nil
  local key_reserved, key_swept = nil, false
  if limit ~= '' then
    local k = redis.call('MGET', keys[8], keys[5])
    key_reserved, key_swept = sweep(keys[7], big(k[1]), now)
    local key_committed = add(big(k[2]), key_reserved)
    if gt(add(key_committed, amount), big(limit)) then refused = {'key', str(key_committed)} end
  end
  local state = redis.call('MGET', keys[4], keys[1], keys[2])
  local reserved, swept = sweep(keys[3], big(state[1]), now)
  if not refused then
    local committed = add(big(state[2]), reserved)
    local after = add(committed, amount)
    for i = a + 6, #args do
      if gt(after, big(args[i])) then
        refused = {'cap', tostring(i - a - 5), str(committed)}
        break
      end
    end
  end
  if not refused and args[a + 3] ~= '' then
    local hour = add(big(state[3]), reserved)
    if gt(add(hour, amount), big(args[a + 3])) then refused = {'hour', str(hour)} end
  end
  if refused then
    if swept then put_reserved(keys[4], reserved, nil) end
    if key_swept then put_reserved(keys[8], key_reserved, nil) end
    return refused
  end
  local ttl = tonumber(args[a + 2])
  local member = args[a + 1] .. '|' .. args[a]
  redis.call('ZADD', keys[3], now + ttl * 1000, member)
  -- Every hold has the same lifetime, so the newest expires last: the bookkeeping lives a
  -- minute longer, then goes with it.
  redis.call('EXPIRE', keys[3], ttl + 60)
  put_reserved(keys[4], add(reserved, amount), ttl + 60)
  if limit ~= '' then
    redis.call('ZADD', keys[7], now + ttl * 1000, member)
    redis.call('EXPIRE', keys[7], ttl + 60)
    put_reserved(keys[8], add(key_reserved, amount), ttl + 60)
  end
  return {'ok'}
end
