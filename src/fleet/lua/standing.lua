-- Where an account stands: {month spend, hour spend, reserved}, expired holds released.
-- KEYS: 1 month spend, 2 hour spend, 3 holds, 4 hold expiry, 5 reserved total.
sweep(KEYS[3], KEYS[4], KEYS[5], server_now())
local r = redis.call('MGET', KEYS[1], KEYS[2], KEYS[5])
return {r[1] or '0', r[2] or '0', r[3] or '0'}
