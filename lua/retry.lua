-- atr-dist wire format v7: retry (docs/wire-format.md, "retry").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, message, id...
-- A dead or cancelled job is queued again with a fresh set of attempts.
-- Returns, per id, what the call did (docs/wire-format.md, "Admin replies"):
--   'changed queued'     retried now;
--   'unchanged <state>'  nothing to do: it is scheduled, queued, retrying or running already;
--   'refused done'       not allowed: a done job is finished (enqueue it again instead);
--   'not_found'.
-- Only a change writes anything, its `retried` event included.
local prefix = ARGV[1]
local message = ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local jobs = prefix .. 'jobs'
local out = {}
local readied = false

-- Wakes the workers waiting for work (registered in `idle` by fetch.lua): one token each on
-- `wake`, which they block on (docs/wire-format.md, "Waking idle workers"). Costs one EXISTS
-- when no worker waits, as under load. The same function is in every script that makes
-- work ready (a script cannot load another).
local function wake(now)
  local idle = prefix .. 'idle'
  if redis.call('EXISTS', idle) == 0 then
    return
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
end
for i = 3, #ARGV do
  local id = ARGV[i]
  local record = redis.call('HGET', jobs, id)
  local state = record and string.match(record, '^%a+')
  local result
  if not state then
    result = 'not_found'
  elseif state == 'dead' or state == 'cancelled' then
    redis.call('ZREM', prefix .. state, id)
    -- Attempts start again from 0: the record keeps only its meta (max_attempts,
    -- enqueued_ms, batch), and the last lease goes. The last error stays on view.
    redis.call('HSET', jobs, id, 'queued ' .. string.match(record, '^%a+ (%d+ %d+ %d+)'))
    redis.call('HSET', prefix .. 'queued_at', id, now)
    redis.call('HDEL', prefix .. 'cancel_requested', id)
    -- The job's earlier end is no longer its result.
    redis.call('HDEL', prefix .. 'result', id)
    redis.call('RPUSH', prefix .. 'queued', id)
    local key = prefix .. 'events:' .. id
    redis.call('RPUSH', key, cjson.encode({at = now, event = 'retried', message = message}))
    redis.call('LTRIM', key, -50, -1)
    result = 'changed queued'
    readied = true
  elseif state == 'done' then
    result = 'refused done'
  else
    result = 'unchanged ' .. state
  end
  out[#out + 1] = result
end
if readied then
  wake(now)
end
return out
