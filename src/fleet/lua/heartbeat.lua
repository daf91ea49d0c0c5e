-- A gateway says it is alive; returns how many were in the last ARGV[2] milliseconds.
-- KEYS: 1 the fleet's nodes (a sorted set by last beat). ARGV: 1 node id, 2 window (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
