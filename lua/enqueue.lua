-- atr-dist wire format v4: enqueue (docs/wire-format.md, "enqueue").
-- KEYS[1] = <prefix>queued    (routes the call to the queue's cluster slot)
-- ARGV = prefix (e.g. "atr-dist:{default}:"), run_at_ms (0 = now), max_attempts,
-- then 3 values per job, at most 1000 jobs per call: id, idempotency_key, envelope
-- (run_at_ms and max_attempts apply to every job of the call).
-- Returns, per job: id, status: 1 = created; 0 = the idempotency key already named a job,
-- whose id is returned; -1 = refused, a job with this id exists under another idempotency key.
--
-- Every write is one variadic command for the whole batch: Redis's cost per command call
-- from Lua is several times its cost per element, so nothing here calls Redis per job.
local prefix = ARGV[1]
local FORMAT = '4'
local format_key = prefix .. 'format'
local fmt = redis.call('GET', format_key)
if fmt and fmt ~= FORMAT then
  return redis.error_reply('ERR atr-dist enqueue: this queue is in wire format ' .. fmt ..
    '; this client speaks format ' .. FORMAT .. '; run `atr-dist queue migrate` ' ..
    '(docs/wire-format.md, "Versions")')
end

-- A queue without a `format` key is either new or a version 1 queue, which never had one.
-- (The same function is in fetch.lua: a script cannot load another.)
-- (An empty list or set does not exist in Redis, and EXISTS does not care about types.)
local function holds_jobs()
  return redis.call('EXISTS', prefix .. 'queued', prefix .. 'scheduled', prefix .. 'retrying',
    prefix .. 'running', prefix .. 'done', prefix .. 'dead', prefix .. 'cancelled') > 0
end

local run_at = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
if run_at == nil or max == nil or max < 1 or max ~= math.floor(max) then
  return redis.error_reply('ERR atr-dist enqueue: run_at_ms must be a number and max_attempts a whole number >= 1')
end
if #ARGV < 3 or (#ARGV - 3) % 3 ~= 0 then
  return redis.error_reply('ERR atr-dist enqueue: after prefix, run_at_ms and max_attempts, arguments must come in groups of 3 per job')
end
local n = (#ARGV - 3) / 3
if n == 0 then
  return {}
end
if n > 1000 then
  return redis.error_reply('ERR atr-dist enqueue: at most 1000 jobs per call')
end
-- Check every job before writing any, so a bad batch changes nothing.
local ids, keys = {}, {}
for j = 1, n do
  local i = 1 + 3 * j
  if ARGV[i] == '' or ARGV[i + 1] == '' or ARGV[i + 2] == '' then
    return redis.error_reply('ERR atr-dist enqueue: id, idempotency_key and envelope must not be empty')
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
local delayed = run_at > now
local state = delayed and 'scheduled' or 'queued'
-- Every new job of the call has the same record, `<state> <max_attempts> <enqueued_ms>`:
-- built once.
local record = state .. ' ' .. string.format('%d', max) .. ' ' .. tostring(now)
local jobs = prefix .. 'jobs'
local idempotency = prefix .. 'idempotency'

-- Two reads for the whole batch: which keys name a job already, and which ids are taken.
local holders = redis.call('HMGET', idempotency, unpack(keys))
local taken = redis.call('HMGET', jobs, unpack(ids))

local out = {}
-- Field-value lists for one HSET each, and the new ids for one RPUSH or ZADD.
local new_envelopes, new_keys, new_records, new_ids = {}, {}, {}, {}
local created = 0
-- Keys and ids created earlier in this same call.
local claimed, created_ids = {}, {}
for j = 1, n do
  local id, key = ids[j], keys[j]
  local holder = claimed[key]
  if not holder and holders[j] then
    holder = holders[j]
    -- A key can outlive its job when purge could not read the job's envelope to find it;
    -- such a key is free again.
    if not redis.call('HGET', jobs, holder) then
      holder = nil
    end
  end
  if holder then
    out[2 * j - 1] = holder
    out[2 * j] = 0
  elseif taken[j] or created_ids[id] then
    out[2 * j - 1] = id
    out[2 * j] = -1
  else
    created = created + 1
    local f = 2 * created
    new_ids[created] = id
    new_records[f - 1] = id
    new_records[f] = record
    new_envelopes[f - 1] = id
    new_envelopes[f] = ARGV[1 + 3 * j + 2]
    new_keys[f - 1] = key
    new_keys[f] = id
    claimed[key] = id
    created_ids[id] = true
    out[2 * j - 1] = id
    out[2 * j] = 1
  end
end

if created > 0 then
  -- At most 2000 values each: far below Lua's unpack limit.
  redis.call('HSET', prefix .. 'envelopes', unpack(new_envelopes))
  redis.call('HSET', idempotency, unpack(new_keys))
  redis.call('HSET', jobs, unpack(new_records))
  if delayed then
    local scored = {}
    for k = 1, created do
      scored[2 * k - 1] = run_at
      scored[2 * k] = new_ids[k]
    end
    redis.call('ZADD', prefix .. 'scheduled', unpack(scored))
  else
    redis.call('RPUSH', prefix .. 'queued', unpack(new_ids))
  end
  redis.call('HINCRBY', prefix .. 'stats', 'enqueued', created)
  local tp = prefix .. 'tp:' .. math.floor(now / 60000)
  redis.call('HINCRBY', tp, 'enqueued', created)
  redis.call('EXPIRE', tp, 7200)
end
return out
