-- atr-dist wire format v1: enqueue (docs/wire-format.md, "enqueue").
-- KEYS[1] = <prefix>queued    (routes the call to the queue's cluster slot)
-- ARGV[1] = <prefix>          e.g. "atr-dist:{default}:"
-- then 8 values per job:
--   id, idempotency_key, envelope, run_at_ms (0 = now), max_attempts, kind, release, platform
-- Returns, per job: id, status: 1 = created; 0 = the idempotency key already named a job,
-- whose id is returned; -1 = refused, a job with this id exists under another idempotency key.
local prefix = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Formatted once: number-to-string conversion per field and job is measurable.
local now_s = tostring(now)
local queued = prefix .. 'queued'
local scheduled = prefix .. 'scheduled'

if (#ARGV - 1) % 8 ~= 0 then
  return redis.error_reply('ERR atr-dist enqueue: arguments must come in groups of 8 per job')
end
-- Check every job before writing any, so a bad batch changes nothing.
for i = 2, #ARGV, 8 do
  if ARGV[i] == '' or ARGV[i + 1] == '' or ARGV[i + 2] == '' then
    return redis.error_reply('ERR atr-dist enqueue: id, idempotency_key and envelope must not be empty')
  end
  if tonumber(ARGV[i + 3]) == nil or tonumber(ARGV[i + 4]) == nil or tonumber(ARGV[i + 4]) < 1 then
    return redis.error_reply('ERR atr-dist enqueue: run_at_ms and max_attempts must be numbers, max_attempts >= 1')
  end
end

local out = {}
local created = 0
-- Ready ids, pushed together at the end in the order given.
local ready = {}
for i = 2, #ARGV, 8 do
  local id = ARGV[i]
  local idem = ARGV[i + 1]
  local idem_key = prefix .. 'idem:' .. idem
  local job = prefix .. 'job:' .. id
  -- One command claims the idempotency key or reads which job holds it.
  local holder = redis.call('SET', idem_key, id, 'NX', 'GET')
  if holder then
    out[#out + 1] = holder
    out[#out + 1] = 0
  elseif redis.call('EXISTS', job) == 1 then
    -- The id is taken by a job with another key: give the key back and refuse.
    redis.call('DEL', idem_key)
    out[#out + 1] = id
    out[#out + 1] = -1
  else
    local state, run_at = 'queued', now_s
    if tonumber(ARGV[i + 3]) > now then
      state, run_at = 'scheduled', ARGV[i + 3]
    end
    redis.call('HSET', job,
      'envelope', ARGV[i + 2], 'state', state, 'attempt', '0', 'max_attempts', ARGV[i + 4],
      'enqueued_at', now_s, 'run_at', run_at, 'queued_at', run_at, 'idempotency_key', idem,
      'kind', ARGV[i + 5], 'release', ARGV[i + 6], 'platform', ARGV[i + 7])
    if state == 'scheduled' then
      redis.call('ZADD', scheduled, run_at, id)
    else
      ready[#ready + 1] = id
    end
    created = created + 1
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end

-- One RPUSH per 500 ids rather than one per job (unpack stays far below Lua's limit).
for i = 1, #ready, 500 do
  redis.call('RPUSH', queued, unpack(ready, i, math.min(i + 499, #ready)))
end

if created > 0 then
  redis.call('HINCRBY', prefix .. 'stats', 'enqueued', created)
  local tp = prefix .. 'tp:' .. math.floor(now / 60000)
  redis.call('HINCRBY', tp, 'enqueued', created)
  redis.call('EXPIRE', tp, 7200)
end
return out
