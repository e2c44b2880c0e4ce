-- Rebuild a wiped day hash from the durable record, unless someone already has.
-- KEYS[1]: day hash sesame:{acct}:day
-- ARGV[1]: now in seconds, or '' for Redis's TIME; ARGV[2], ARGV[3], ...:
--   pairs of (unix-epoch minute, recipients); minutes outside the window are
--   skipped, repeated minutes add up
-- Returns 1 if it wrote the hash, 0 if the hash existed and was left alone
--   (another process rebuilt it first; loading again would double count).

local day = KEYS[1]
if redis.call('HEXISTS', day, 'oldest') == 1 then
  return 0
end
-- The same test as admit.lua's: a hash without the marker is no count at all.
redis.call('DEL', day)
local cutoff = math.floor(clock(ARGV[1]) / 60) - WINDOW_MINUTES + 1
local total = 0
for i = 2, #ARGV - 1, 2 do
  local minute = tonumber(ARGV[i])
  local sent = tonumber(ARGV[i + 1])
  if minute >= cutoff and sent > 0 then
    redis.call('HINCRBY', day, bucket(minute), sent)
    total = total + sent
  end
end
-- Written even for an account with no history, so it is not rebuilt again.
redis.call('HSET', day, 'total', total, 'oldest', bucket(cutoff))
redis.call('PEXPIRE', day, TTL_MS)
return 1
