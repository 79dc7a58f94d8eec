-- atr-dist wire format v7: enqueue (docs/wire-format.md, "enqueue").
-- KEYS[1] = <prefix>queued    (routes the call to the queue's cluster slot)
-- ARGV = prefix (e.g. "atr-dist:{default}:"), run_at_ms (0 = now), max_attempts,
-- then 2 values per job, at most 1000 jobs per call: id, idempotency_key
-- (run_at_ms and max_attempts apply to every job of the call).
-- The envelopes are not arguments: the producer writes them, id -> envelope, to the hash
-- `<prefix>incoming` in the same MULTI, just before this call:
--   MULTI; DEL <prefix>incoming; HSET <prefix>incoming id envelope ...; EVALSHA ...; EXEC
-- This script turns that hash into the call's envelope batch `env:<batch>` (created jobs
-- only) or deletes it, so `incoming` never outlives the transaction.
-- Returns, per job: id, status: 1 = created; 0 = the idempotency key already named a job,
-- whose id is returned; -1 = refused, a job with this id exists under another idempotency key.
--
-- Why the envelopes go around the script: Redis's Lua hashes every byte of every string it
-- makes, arguments included, and envelopes are most of a job's bytes; and a batch's own
-- small hash, renamed into place whole, keeps every enqueue from growing one queue-wide hash
-- of envelopes. Every write is one variadic command for the whole batch: Redis's cost per
-- command call from Lua is several times its cost per element, so nothing here calls Redis
-- per job.
local prefix = ARGV[1]
local FORMAT = '7'
local incoming = prefix .. 'incoming'

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

-- Every refusal also drops the envelopes the producer sent, so nothing is left behind.
local function refuse(message)
  redis.call('DEL', incoming)
  return redis.error_reply('ERR atr-dist enqueue: ' .. message)
end

local format_key = prefix .. 'format'
local fmt = redis.call('GET', format_key)
-- Version 8 is version 7's layout on a queue that may be sharded (docs/wire-format.md,
-- "Shards"); a queue is marked 8 when it is first sharded, so that version 7 clients,
-- which know one shard only, refuse it.
if fmt and fmt ~= FORMAT and fmt ~= '8' then
  return refuse('this queue is in wire format ' .. fmt .. '; this client speaks formats ' ..
    FORMAT .. ' and 8; run `atr-dist queue migrate` (docs/wire-format.md, "Versions")')
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
-- Finite numbers only (inf - inf and nan - nan are nan): a job due at +inf never runs, and
-- workers read max_attempts as 32 bits.
if run_at == nil or run_at - run_at ~= 0 or max == nil or max < 1 or max > 4294967295
  or max ~= math.floor(max) then
  return refuse('run_at_ms must be a number and max_attempts a whole number from 1 to 4294967295')
end
if #ARGV < 3 or (#ARGV - 3) % 2 ~= 0 then
  return refuse('after prefix, run_at_ms and max_attempts, arguments must come in pairs ' ..
    '(id, idempotency_key) per job')
end
local n = (#ARGV - 3) / 2
if n > 1000 then
  return refuse('at most 1000 jobs per call')
end
-- Exactly one envelope per job, under its id. HKEYS reads the ids only: the envelopes
-- themselves stay out of Lua, which is what `incoming` is for.
local sent = redis.call('HKEYS', incoming)
local mismatch = n .. ' job(s) but ' .. #sent .. ' envelope(s) in ' .. incoming ..
  '; write each job\'s envelope under its id, in the same MULTI, and give every job of a ' ..
  'call its own id'
if #sent ~= n then
  return refuse(mismatch)
end
if n == 0 then
  return {}
end
local unclaimed = {}
for _, id in ipairs(sent) do
  unclaimed[id] = true
end
-- Check every job before writing any, so a bad batch changes nothing.
local ids, keys = {}, {}
for j = 1, n do
  local i = 2 + 2 * j
  local id = ARGV[i]
  if id == '' or ARGV[i + 1] == '' then
    return refuse('id and idempotency_key must not be empty')
  end
  -- Each envelope is claimed once, so a repeated id is caught too.
  if not unclaimed[id] then
    return refuse(mismatch .. ' (no envelope for job ' .. id .. ', or the id is repeated)')
  end
  unclaimed[id] = nil
  ids[j] = id
  keys[j] = ARGV[i + 1]
end

if not fmt then
  if holds_jobs() then
    return refuse('this queue holds jobs but has no format key, so it is in wire format 1; ' ..
      'run `atr-dist queue migrate` (docs/wire-format.md, "Versions")')
  end
  redis.call('SET', format_key, FORMAT)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local delayed = run_at > now
local jobs = prefix .. 'jobs'
local idempotency = prefix .. 'idempotency'

-- Two reads for the whole batch: which keys name a job already, and which ids are taken.
local holders = redis.call('HMGET', idempotency, unpack(keys))
local taken = redis.call('HMGET', jobs, unpack(ids))

local out = {}
-- Field-value lists for one HSET each, the new ids for one RPUSH or ZADD, and the ids whose
-- envelopes are not kept.
local new_keys, new_ids, dropped = {}, {}, {}
local created = 0
-- Keys claimed earlier in this same call. (Ids are unique within a call: checked above.)
local claimed = {}
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
    dropped[#dropped + 1] = id
  elseif taken[j] then
    out[2 * j - 1] = id
    out[2 * j] = -1
    dropped[#dropped + 1] = id
  else
    created = created + 1
    new_ids[created] = id
    new_keys[2 * created - 1] = key
    new_keys[2 * created] = id
    claimed[key] = id
    out[2 * j - 1] = id
    out[2 * j] = 1
  end
end

if created == 0 then
  redis.call('DEL', incoming)
  return out
end
-- Where the envelopes go. A call that creates one job (a producer enqueuing jobs one at a
-- time, as ATR does) adds its envelope to batch 0, the queue's shared hash: a key of its own
-- would cost ~260 bytes beyond the envelope (a key, a hash and its table, for one field)
-- where a field of a shared hash costs ~95. One envelope through Lua costs little. A call
-- that creates several jobs renames `incoming` to a batch of its own, new for every such
-- call, so `env:<batch>` is a key nobody else has written and the envelopes stay out of Lua.
-- (A field of batch 0 under the new id can only be an envelope a purge left without its
-- job, which enqueue treats as free, like the job's id.)
local batch
if created == 1 then
  batch = 0
  local envelope = redis.call('HGET', incoming, new_ids[1])
  redis.call('HSET', prefix .. 'env:0', new_ids[1], envelope)
  redis.call('DEL', incoming)
else
  batch = redis.call('INCR', prefix .. 'batches')
  if #dropped > 0 then
    redis.call('HDEL', incoming, unpack(dropped))
  end
  redis.call('RENAME', incoming, prefix .. 'env:' .. batch)
end
-- Every new job of the call has the same record, `<state> <max_attempts> <enqueued_ms>
-- <batch>`: built once.
local record = (delayed and 'scheduled' or 'queued') .. ' ' .. string.format('%d', max) ..
  ' ' .. tostring(now) .. ' ' .. batch
local new_records = {}
for k = 1, created do
  new_records[2 * k - 1] = new_ids[k]
  new_records[2 * k] = record
end
-- At most 2000 values each: far below Lua's unpack limit.
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
-- A delayed job wakes them too: it may fall due before their wait ends.
wake(now)
return out
