-- Release a hold whose request failed or was abandoned (nothing billed).
-- KEYS: 1 holds, 2 reserved total. ARGV: 1 the hold (`id|amount`).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  put_reserved(KEYS[2], sub(big(redis.call('GET', KEYS[2])), held(ARGV[1])), nil)
end
return 1
