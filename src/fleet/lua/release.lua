-- Release a hold whose request failed or was abandoned (nothing billed).
-- KEYS: 1 the account's holds, 2 its reserved total, then (a key with a limit of its own) 3
-- the key's holds, 4 its reserved total. ARGV: 1 the hold (`id|amount`).
for i = 1, #KEYS, 2 do
  if redis.call('ZREM', KEYS[i], ARGV[1]) == 1 then
    put_reserved(KEYS[i + 1], sub(big(redis.call('GET', KEYS[i + 1])), held(ARGV[1])), nil)
  end
end
return 1
