-- Give back an admitted send that was never committed.
-- KEYS[1]: day hash sesame:{acct}:day; KEYS[2]: rate hash sesame:{acct}:rate
-- ARGV[1]: recipients; ARGV[2]: now in seconds, or '' for Redis's TIME
-- Returns the recipients taken off the daily count: fewer than ARGV[1] when
--   the hash was rebuilt or wiped since the admit, as the send was not in it.

local day, rate = KEYS[1], KEYS[2]
local recipients = tonumber(ARGV[1])
local now = clock(ARGV[2])

-- The send's tokens go back first; the bucket can't overfill, and refilling
-- before or after adding is the same once capped.
local held = redis.call('HMGET', rate, 'tokens', 'capacity')
if held[1] then
  local tokens = math.min(tonumber(held[2]), tonumber(held[1]) + recipients)
  redis.call('HSET', rate, 'tokens', num(tokens))
end

local state = redis.call('HMGET', day, 'total', 'oldest')
if not state[2] then
  return 0
end
local minute = math.floor(now / 60)
local total, oldest = expire(day, minute, tonumber(state[1]), tonumber(state[2]))

-- The send was counted in the bucket of its admit, a moment ago: take it from
-- the newest buckets backwards so it comes off the right one.
local owed = recipients
local m = math.max(minute, oldest)
while owed > 0 and m >= oldest do
  local field = bucket(m)
  local sent = tonumber(redis.call('HGET', day, field))
  if sent then
    local taken = math.min(sent, owed)
    if taken == sent then
      redis.call('HDEL', day, field)
    else
      redis.call('HINCRBY', day, field, -taken)
    end
    owed = owed - taken
    total = total - taken
  end
  m = m - 1
end
redis.call('HSET', day, 'total', total)
return recipients - owed
