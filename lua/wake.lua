-- atr-dist wire format v7: wake (docs/wire-format.md, "Waking idle workers").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix
-- Wakes the workers waiting for work, for a change no other script makes: `queue resume`.
-- Returns how many were waiting.
local prefix = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Wakes the workers waiting for work (registered in `idle` by fetch.lua): one token each on
-- `wake`, which they block on (docs/wire-format.md, "Waking idle workers"). Costs one EXISTS
-- when no worker waits, as under load. The same function is in every script that makes
-- work ready (a script cannot load another).
local function wake(now)
  local idle = prefix .. 'idle'
  if redis.call('EXISTS', idle) == 0 then
    return 0
  end
  local n = math.min(redis.call('ZCOUNT', idle, now, '+inf'), 1000)
  redis.call('DEL', idle)
  if n > 0 then
    local tokens = {}
    for k = 1, n do
      tokens[k] = '1'
    end
    redis.call('RPUSH', prefix .. 'wake', unpack(tokens))
  end
  return n
end

return wake(now)
