-- Release a hold whose request failed or was abandoned (nothing billed).
-- KEYS: 1 holds, 2 hold expiry, 3 reserved total. ARGV: 1 hold id.
release(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return 1
