-- Where an account stands: {month spend, hour spend, reserved, the key's month spend},
-- expired holds released.
-- KEYS: 1 the account's month spend, 2 hour spend, 3 holds, 4 reserved total, 5 the key's
-- month spend, 6 the key's hour spend (read only by the carry-over).
-- ARGV: 1 '1' to carry a pre-account key's totals over (see `carry` in lib.lua), else ''.
if ARGV[1] == '1' then carry(KEYS) end
local r = redis.call('MGET', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
local reserved, swept = sweep(KEYS[3], big(r[3]), server_now())
if swept then put_reserved(KEYS[4], reserved, nil) end
return {r[1] or '0', r[2] or '0', str(reserved), r[4] or '0'}
