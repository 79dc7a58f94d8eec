-- atr-dist wire format v7: cancel (docs/wire-format.md, "cancel").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, message, id...
-- scheduled, queued and retrying jobs become cancelled at once; for a running job the
-- request is recorded and the worker sees it on its next heartbeat. The jobs cancelled here
-- are named in one `results` entry (without a result: no worker reported on them).
-- Returns, per id: 'cancelled', 'cancel_requested', 'not_found', or the terminal state the
-- job is already in (done, dead, cancelled), which cannot be cancelled.
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
    redis.call('HSET', prefix .. 'cancel_requested', id, '1')
    event(id, 'cancel_requested')
    result = 'cancel_requested'
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
    result = 'cancelled'
  else
    -- Already finished (done, dead, or cancelled before): nothing to do, and no event, so
    -- that a repeated cancel leaves the job as it was.
    result = state
  end
  out[#out + 1] = result
end
if cancelled > 0 then
  redis.call('HINCRBY', prefix .. 'stats', 'cancelled', cancelled)
  redis.call('XADD', prefix .. 'results', 'MAXLEN', '~', 100000, '*',
    'state', 'cancelled', 'atr_status', 'FAILED', 'ids', table.concat(cancelled_ids, ' '))
end
return out
