-- atr-dist wire format v7: cancel (docs/wire-format.md, "cancel").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, message, id...
-- scheduled, queued and retrying jobs become cancelled at once; for a running job the
-- request is recorded and the worker sees it on its next heartbeat. The jobs cancelled here
-- are named in one `results` entry (without a result: no worker reported on them).
-- Returns, per id, what the call did (docs/wire-format.md, "Admin replies"):
--   'changed cancelled'    cancelled now (it was scheduled, queued or retrying);
--   'changed running'      its cancel requested now (it runs);
--   'unchanged cancelled'  nothing to do: cancelled already;
--   'unchanged running'    nothing to do: its cancel was requested already;
--   'refused <state>'      not allowed: it is done or dead, finished;
--   'not_found'.
-- Only a change writes anything, events included, so a repeated cancel leaves the job as it was.
local prefix = ARGV[1]
local message = ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local jobs = prefix .. 'jobs'
local out = {}
local cancelled = 0
local cancelled_ids = {}
local function event(id, name)
  local key = prefix .. 'events:' .. id
  redis.call('RPUSH', key, cjson.encode({at = now, event = name, message = message}))
  redis.call('LTRIM', key, -50, -1)
end
for i = 3, #ARGV do
  local id = ARGV[i]
  local record = redis.call('HGET', jobs, id)
  local state = record and string.match(record, '^%a+')
  local result
  if not state then
    result = 'not_found'
  elseif state == 'running' then
    if redis.call('HSETNX', prefix .. 'cancel_requested', id, '1') == 1 then
      event(id, 'cancel_requested')
      result = 'changed running'
    else
      result = 'unchanged running'
    end
  elseif state == 'queued' or state == 'scheduled' or state == 'retrying' then
    if state == 'queued' then
      -- O(queue length), like any removal from the middle of a list; cancels are rare.
      redis.call('LREM', prefix .. 'queued', 1, id)
      redis.call('HDEL', prefix .. 'queued_at', id)
    else
      redis.call('ZREM', prefix .. state, id)
    end
    redis.call('HSET', jobs, id, 'cancelled' .. string.match(record, '^%a+(.*)$'))
    redis.call('HSET', prefix .. 'last_error', id, message)
    redis.call('ZADD', prefix .. 'cancelled', now, id)
    event(id, 'cancelled')
    cancelled = cancelled + 1
    cancelled_ids[cancelled] = id
    result = 'changed cancelled'
  elseif state == 'cancelled' then
    result = 'unchanged cancelled'
  else
    -- Done or dead: finished, and a cancel cannot change how.
    result = 'refused ' .. state
  end
  out[#out + 1] = result
end
if cancelled > 0 then
  redis.call('HINCRBY', prefix .. 'stats', 'cancelled', cancelled)
  redis.call('XADD', prefix .. 'results', 'MAXLEN', '~', 100000, '*',
    'state', 'cancelled', 'atr_status', 'FAILED', 'ids', table.concat(cancelled_ids, ' '))
end
return out
