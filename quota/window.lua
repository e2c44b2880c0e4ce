-- Helpers prepended to every quota script (see gate.py); not run on its own.
-- KEYS, ARGV: none of its own. Defines clock(), bucket(), num() and expire().
--
-- The day hash holds one field per unix-epoch minute with recipients sent in
-- it, plus 'total' (sum of those fields) and 'oldest' (every minute before it
-- has been dropped), so each call only steps over the minutes that just left
-- the window instead of reading all 1440.

-- SES counts a rolling 24 hours: 24 * 60 one-minute buckets.
local WINDOW_MINUTES = 1440
-- 25 hours: a key left alone this long holds only stale buckets, so it may go.
local TTL_MS = 90000000

-- Return the time in seconds: the caller's override if any, else Redis's clock,
-- which every API process shares whatever host it runs on.
local function clock(override)
  if override ~= nil and override ~= '' then
    return tonumber(override)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Return the field name of a minute's bucket.
local function bucket(minute)
  return string.format('%d', minute)
end

-- Return a number as a string that reads back exactly; Redis would truncate a
-- returned Lua number to an integer.
local function num(x)
  return string.format('%.17g', x)
end

-- Drop the buckets that have left the window ending at `minute`; return the new
-- total and oldest. Costs min(minutes stepped over, buckets held) calls.
local function expire(day, minute, total, oldest)
  local cutoff = minute - WINDOW_MINUTES + 1
  if oldest >= cutoff then
    return total, oldest
  end
  if redis.call('HLEN', day) - 2 <= cutoff - oldest then
    -- Fewer buckets than minutes to step over (the account was idle): scan them.
    local flat = redis.call('HGETALL', day)
    for i = 1, #flat, 2 do
      local minute_of = tonumber(flat[i])
      if minute_of ~= nil and minute_of < cutoff then
        total = total - tonumber(flat[i + 1])
        redis.call('HDEL', day, flat[i])
      end
    end
  else
    for m = oldest, cutoff - 1 do
      local field = bucket(m)
      local sent = redis.call('HGET', day, field)
      if sent then
        total = total - tonumber(sent)
        redis.call('HDEL', day, field)
      end
    end
  end
  redis.call('HSET', day, 'total', total, 'oldest', bucket(cutoff))
  return total, cutoff
end
