-- Reserve a request's worst-case cost if it fits under every limit of the account.
-- KEYS: month spend, hour spend, holds, reserved total (one account's, so one hash slot).
-- ARGV: amount, hold id, hold lifetime (s), hourly limit ('' for none), caps.
return reserve(KEYS, ARGV, 1, server_now())
