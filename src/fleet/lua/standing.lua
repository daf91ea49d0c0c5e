-- Where an account stands: {month spend, hour spend, reserved}, expired holds released.
-- KEYS: 1 month spend, 2 hour spend, 3 holds, 4 reserved total.
local r = redis.call('MGET', KEYS[1], KEYS[2], KEYS[4])
local reserved, swept = sweep(KEYS[3], big(r[3]), server_now())
if swept then put_reserved(KEYS[4], reserved, nil) end
return {r[1] or '0', r[2] or '0', str(reserved)}
