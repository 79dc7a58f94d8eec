-- atr-dist wire format v3: retry (docs/wire-format.md, "retry").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, message, id...
-- A dead or cancelled job is queued again with a fresh set of attempts.
-- Returns, per id: 'queued', 'not_found', or the state that cannot be retried.
local prefix = ARGV[1]
local message = ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state_key = prefix .. 'state'
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local state = redis.call('HGET', state_key, id)
  local result
  if not state then
    result = 'not_found'
  elseif state == 'dead' or state == 'cancelled' then
    redis.call('ZREM', prefix .. state, id)
    redis.call('HSET', state_key, id, 'queued')
    redis.call('HSET', prefix .. 'queued_at', id, now)
    -- Attempts start again from 0: the last lease goes. The last error stays on view.
    redis.call('HDEL', prefix .. 'lease', id)
    redis.call('HDEL', prefix .. 'cancel_requested', id)
    redis.call('RPUSH', prefix .. 'queued', id)
    local key = prefix .. 'events:' .. id
    redis.call('RPUSH', key, cjson.encode({at = now, event = 'retried', message = message}))
    redis.call('LTRIM', key, -50, -1)
    result = 'queued'
  else
    result = state
  end
  out[#out + 1] = result
end
return out
