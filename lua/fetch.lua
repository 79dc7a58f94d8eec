-- atr-dist wire format v3: fetch (docs/wire-format.md, "fetch").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, worker_id, lease_ms, max_jobs
-- Moves due scheduled and retrying jobs to queued, recovers expired leases, then leases up
-- to max_jobs queued jobs to worker_id.
-- Returns now_ms (Redis's clock), then per leased job 5 values:
--   id, lease, meta, queued_at (or ''), envelope
-- where lease is "<attempt> <started_ms> <worker_id>" (the token its ack and heartbeat
-- must present) and meta is "<max_attempts> <enqueued_at_ms>", both as stored.
-- Every step is bounded (at most 1000 due jobs, 100 expired leases, max_jobs fetched), so a
-- call costs the same whatever the backlog; and every step is a handful of variadic
-- commands for the whole batch, never one command per job.
local prefix = ARGV[1]
local worker = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local max_jobs = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local queued = prefix .. 'queued'
local running = prefix .. 'running'
local state = prefix .. 'state'
local leases = prefix .. 'lease'

local fmt = redis.call('GET', prefix .. 'format')
if fmt and fmt ~= '3' then
  return redis.error_reply('ERR atr-dist fetch: this queue is in wire format ' .. fmt ..
    '; this worker speaks format 3; run `atr-dist queue migrate` (docs/wire-format.md, "Versions")')
end
-- A queue without a `format` key is either new or a version 1 queue, which never had one.
-- (The same function is in enqueue.lua: a script cannot load another.)
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
if not fmt then
  -- Nothing was ever enqueued in format 3: either there is nothing to do, or the jobs are
  -- in format 1 and must be moved first.
  if holds_jobs() then
    return redis.error_reply('ERR atr-dist fetch: this queue holds jobs but has no format key, ' ..
      'so it is in wire format 1; run `atr-dist queue migrate` (docs/wire-format.md, "Versions")')
  end
  return {now}
end
if redis.call('EXISTS', prefix .. 'paused') == 1 then
  return {now}
end

local function event(id, name, attempt, message)
  local key = prefix .. 'events:' .. id
  redis.call('RPUSH', key, cjson.encode({at = now, event = name, attempt = attempt, message = message}))
  redis.call('LTRIM', key, -50, -1)
end

-- The attempt number at the head of a lease token; 0 without one.
local function attempt_of(lease)
  if not lease then
    return 0
  end
  return tonumber(string.match(lease, '^%d+')) or 0
end

-- Due delayed jobs and due retries become queued, in due order.
for _, set in ipairs({'scheduled', 'retrying'}) do
  local key = prefix .. set
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    local states, queued_at = {}, {}
    for k, id in ipairs(due) do
      states[2 * k - 1] = id
      states[2 * k] = 'queued'
      queued_at[2 * k - 1] = id
      queued_at[2 * k] = now
    end
    redis.call('ZREM', key, unpack(due))
    redis.call('HSET', state, unpack(states))
    redis.call('HSET', prefix .. 'queued_at', unpack(queued_at))
    redis.call('RPUSH', queued, unpack(due))
  end
end

-- Leases that ran out belong to workers that died or stalled: queue the job again (at the
-- front: it was due already), or give up when it has used all its attempts, so a job that
-- kills its worker cannot loop forever. Rare, so one job at a time.
local expired = redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, 100)
local recovered, died = 0, 0
for _, id in ipairs(expired) do
  local lease = redis.call('HGET', leases, id)
  local attempt = attempt_of(lease)
  local max = tonumber(string.match(redis.call('HGET', prefix .. 'meta', id) or '', '^%d+')) or 1
  local holder = lease and string.match(lease, '^%d+ %d+ (.*)$') or 'unknown'
  redis.call('ZREM', running, id)
  local message = 'lease of worker ' .. holder .. ' expired (worker died or stalled)'
  if attempt >= max then
    message = message .. '; no attempts left'
    redis.call('HSET', state, id, 'dead')
    redis.call('HSET', prefix .. 'error_class', id, 'transient')
    redis.call('HSET', prefix .. 'last_error', id, message)
    redis.call('ZADD', prefix .. 'dead', now, id)
    event(id, 'dead', attempt, message)
    died = died + 1
  else
    redis.call('HSET', state, id, 'queued')
    redis.call('HSET', prefix .. 'queued_at', id, now)
    redis.call('HSET', prefix .. 'last_error', id, message)
    redis.call('LPUSH', queued, id)
    event(id, 'lease_expired', attempt, message)
    recovered = recovered + 1
  end
end
if recovered > 0 then
  redis.call('HINCRBY', prefix .. 'stats', 'recovered', recovered)
end
if died > 0 then
  redis.call('HINCRBY', prefix .. 'stats', 'dead', died)
end

local ids = redis.call('LPOP', queued, math.min(max_jobs, 1000))
if not ids then
  return {now}
end
local states = redis.call('HMGET', state, unpack(ids))
local previous = redis.call('HMGET', leases, unpack(ids))
local meta = redis.call('HMGET', prefix .. 'meta', unpack(ids))
-- `queued_at` holds only queued jobs that were re-queued, and most batches have none: look
-- it up only when it is not empty, and take the batch's entries out once leased.
local queued_at_key = prefix .. 'queued_at'
local queued_at = {}
local requeued = redis.call('EXISTS', queued_at_key) == 1
if requeued then
  queued_at = redis.call('HMGET', queued_at_key, unpack(ids))
end
local envelopes = redis.call('HMGET', prefix .. 'envelopes', unpack(ids))
-- The token's tail is the same for the whole batch: build it once.
local tail = ' ' .. tostring(now) .. ' ' .. worker
local expiry = now + lease_ms
local new_states, new_leases, running_scores = {}, {}, {}
local out = {now}
local n, o = 0, 1
for k = 1, #ids do
  -- A list entry whose job is no longer queued (purged, or cancelled and re-queued by an
  -- operator in between) is stale: drop it.
  if states[k] == 'queued' then
    local id = ids[k]
    local lease
    if previous[k] then
      lease = (attempt_of(previous[k]) + 1) .. tail
    else
      lease = '1' .. tail
    end
    n = n + 1
    new_states[2 * n - 1] = id
    new_states[2 * n] = 'running'
    new_leases[2 * n - 1] = id
    new_leases[2 * n] = lease
    running_scores[2 * n - 1] = expiry
    running_scores[2 * n] = id
    -- A job without an envelope or meta (written by hand) is still leased, with empty
    -- strings, and then dead-lettered as malformed by the worker.
    out[o + 1] = id
    out[o + 2] = lease
    out[o + 3] = meta[k] or ''
    out[o + 4] = queued_at[k] or ''
    out[o + 5] = envelopes[k] or ''
    o = o + 5
  end
end
if requeued then
  redis.call('HDEL', queued_at_key, unpack(ids))
end
if n > 0 then
  redis.call('HSET', state, unpack(new_states))
  redis.call('HSET', leases, unpack(new_leases))
  redis.call('ZADD', running, unpack(running_scores))
end
return out
