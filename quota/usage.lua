-- Count the recipients an account sent in the rolling 24 hours.
-- KEYS[1]: day hash sesame:{acct}:day
-- ARGV[1]: now in seconds, or '' for Redis's TIME
-- Returns the count, or -1 when the day hash is missing (load.lua it first).

local day = KEYS[1]
local state = redis.call('HMGET', day, 'total', 'oldest')
if not state[2] then
  return -1
end
local minute = math.floor(clock(ARGV[1]) / 60)
local total = expire(day, minute, tonumber(state[1]), tonumber(state[2]))
return total
