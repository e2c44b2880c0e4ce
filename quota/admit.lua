-- Admit one send of ARGV[1] recipients against the daily quota and send rate.
-- KEYS[1]: day hash sesame:{acct}:day; KEYS[2]: rate hash sesame:{acct}:rate
-- ARGV[1]: recipients; ARGV[2]: max_24_hour_send; ARGV[3]: max_send_rate
--   (recipients/s); ARGV[4]: now in seconds, or '' for Redis's TIME
-- Returns {status, sent_last_24_hours, tokens as a string}; status is
--   'admitted', 'daily_exceeded', 'rate_exceeded', or 'rebuild' when the day
--   hash is missing (nothing is written then; load.lua it and call again).
--   A rejected send writes nothing but the expiry of stale buckets.

local day, rate = KEYS[1], KEYS[2]
local recipients = tonumber(ARGV[1])
local max_day = tonumber(ARGV[2])
local max_rate = tonumber(ARGV[3])
local now = clock(ARGV[4])

local state = redis.call('HMGET', day, 'total', 'oldest')
if not state[2] then
  return {'rebuild', 0, '0'}
end
local minute = math.floor(now / 60)
local total, oldest = expire(day, minute, tonumber(state[1]), tonumber(state[2]))

-- SES's bucket holds at most one second of sending, and never less than one
-- recipient; a missing bucket (new, idle or wiped account) is full.
local capacity = math.max(1, max_rate)
local tokens, last = capacity, now
local held = redis.call('HMGET', rate, 'tokens', 'at')
if held[1] then
  tokens, last = tonumber(held[1]), tonumber(held[2])
  if now > last then
    tokens = tokens + (now - last) * max_rate
    last = now
  end
  tokens = math.min(capacity, tokens)
end

if total + recipients > max_day then
  return {'daily_exceeded', total, num(tokens)}
end
-- Any credit admits the whole send, which may leave the bucket in debt.
if tokens <= 0 then
  return {'rate_exceeded', total, num(tokens)}
end

tokens = tokens - recipients
total = total + recipients
-- A clock that went back a day must not write behind the expiry cursor.
redis.call('HINCRBY', day, bucket(math.max(minute, oldest)), recipients)
redis.call('HSET', day, 'total', total)
redis.call('PEXPIRE', day, TTL_MS)
redis.call('HSET', rate, 'tokens', num(tokens), 'at', num(last), 'capacity', num(capacity))
redis.call('PEXPIRE', rate, TTL_MS)
return {'admitted', total, num(tokens)}
