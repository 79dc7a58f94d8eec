-- atr-dist wire format v2: enqueue (docs/wire-format.md, "enqueue").
-- KEYS[1] = <prefix>queued    (routes the call to the queue's cluster slot)
-- ARGV[1] = <prefix>          e.g. "atr-dist:{default}:"
-- then 5 values per job, at most 1000 jobs per call:
--   id, idempotency_key, envelope, run_at_ms (0 = now), max_attempts
-- Returns, per job: id, status: 1 = created; 0 = the idempotency key already named a job,
-- whose id is returned; -1 = refused, a job with this id exists under another idempotency key.
local prefix = ARGV[1]
local FORMAT = '2'
local format_key = prefix .. 'format'
local fmt = redis.call('GET', format_key)
if fmt and fmt ~= FORMAT then
  return redis.error_reply('ERR atr-dist enqueue: this queue is in wire format ' .. fmt ..
    '; this client speaks format ' .. FORMAT .. ' (see docs/wire-format.md, "Versions")')
end

-- A queue without a `format` key is either new or a version 1 queue, which never had one.
-- (The same function is in fetch.lua: a script cannot load another.)
local function holds_jobs()
  if redis.call('LLEN', prefix .. 'queued') > 0 then
    return true
  end
  for _, set in ipairs({'scheduled', 'retrying', 'running', 'done', 'dead', 'cancelled'}) do
    if redis.call('ZCARD', prefix .. set) > 0 then
      return true
    end
  end
  return false
end

if (#ARGV - 1) % 5 ~= 0 then
  return redis.error_reply('ERR atr-dist enqueue: arguments must come in groups of 5 per job')
end
local n = (#ARGV - 1) / 5
if n == 0 then
  return {}
end
if n > 1000 then
  return redis.error_reply('ERR atr-dist enqueue: at most 1000 jobs per call')
end
-- Check every job before writing any, so a bad batch changes nothing.
local ids, keys = {}, {}
for j = 1, n do
  local i = 2 + (j - 1) * 5
  if ARGV[i] == '' or ARGV[i + 1] == '' or ARGV[i + 2] == '' then
    return redis.error_reply('ERR atr-dist enqueue: id, idempotency_key and envelope must not be empty')
  end
  if tonumber(ARGV[i + 3]) == nil or tonumber(ARGV[i + 4]) == nil or tonumber(ARGV[i + 4]) < 1 then
    return redis.error_reply('ERR atr-dist enqueue: run_at_ms and max_attempts must be numbers, max_attempts >= 1')
  end
  ids[j] = ARGV[i]
  keys[j] = ARGV[i + 1]
end

if not fmt then
  if holds_jobs() then
    return redis.error_reply('ERR atr-dist enqueue: this queue holds jobs but has no format key, ' ..
      'so it is in wire format 1; run `atr-dist queue migrate` (docs/wire-format.md, "Versions")')
  end
  redis.call('SET', format_key, FORMAT)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Formatted once: number-to-string conversion per field and job is measurable.
local now_s = tostring(now)
local envelopes = prefix .. 'envelopes'
local idempotency = prefix .. 'idempotency'

-- Two reads for the whole batch: which keys name a job already, and which ids are taken.
local holders = redis.call('HMGET', idempotency, unpack(keys))
local taken = redis.call('HMGET', envelopes, unpack(ids))

local out = {}
-- Written together at the end: envelopes and keys in one HSET each, ready ids in one RPUSH.
local new_envelopes, new_keys, ready = {}, {}, {}
-- Keys and ids created earlier in this same call.
local claimed, created_ids = {}, {}
local scheduled = prefix .. 'scheduled'
for j = 1, n do
  local i = 2 + (j - 1) * 5
  local id, key = ids[j], keys[j]
  local holder = claimed[key]
  if not holder and holders[j] then
    holder = holders[j]
    -- A key can outlive its job when purge could not read the job's envelope to find it;
    -- such a key is free again.
    if redis.call('HEXISTS', envelopes, holder) == 0 then
      holder = nil
    end
  end
  if holder then
    out[#out + 1] = holder
    out[#out + 1] = 0
  elseif taken[j] or created_ids[id] then
    out[#out + 1] = id
    out[#out + 1] = -1
  else
    local run_at = tonumber(ARGV[i + 3])
    if run_at > now then
      redis.call('HSET', prefix .. 'job:' .. id, 'state', 'scheduled', 'max_attempts', ARGV[i + 4],
        'enqueued_at', now_s, 'run_at', ARGV[i + 3], 'queued_at', ARGV[i + 3])
      redis.call('ZADD', scheduled, ARGV[i + 3], id)
    else
      -- `queued_at` is left out while it equals `enqueued_at`, and `attempt` while it is 0.
      redis.call('HSET', prefix .. 'job:' .. id, 'state', 'queued', 'max_attempts', ARGV[i + 4],
        'enqueued_at', now_s)
      ready[#ready + 1] = id
    end
    new_envelopes[#new_envelopes + 1] = id
    new_envelopes[#new_envelopes + 1] = ARGV[i + 2]
    new_keys[#new_keys + 1] = key
    new_keys[#new_keys + 1] = id
    claimed[key] = id
    created_ids[id] = true
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end

local created = #new_keys / 2
if created > 0 then
  -- At most 2000 values each: far below Lua's unpack limit.
  redis.call('HSET', envelopes, unpack(new_envelopes))
  redis.call('HSET', idempotency, unpack(new_keys))
  if #ready > 0 then
    redis.call('RPUSH', prefix .. 'queued', unpack(ready))
  end
  redis.call('HINCRBY', prefix .. 'stats', 'enqueued', created)
  local tp = prefix .. 'tp:' .. math.floor(now / 60000)
  redis.call('HINCRBY', tp, 'enqueued', created)
  redis.call('EXPIRE', tp, 7200)
end
return out
