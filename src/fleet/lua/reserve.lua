-- Reserve a request's worst-case cost if it fits under every limit of the account (and the
-- key's own monthly limit, if it has one).
-- KEYS: the account's month spend, hour spend, holds, reserved total, then the key's month
-- spend, hour spend, holds, reserved total (see `reserve` in lib.lua).
-- ARGV: amount, hold id, hold lifetime (s), hourly limit ('' for none), key limit ('' for
-- none), carry flag, caps.
return reserve(KEYS, ARGV, 1, server_now())
