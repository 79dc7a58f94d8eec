-- atr-dist wire format v2: fetch (docs/wire-format.md, "fetch").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, worker_id, lease_ms, max_jobs
-- Moves due scheduled and retrying jobs to queued, recovers expired leases, then leases up
-- to max_jobs queued jobs to worker_id.
-- Returns, per leased job: id, attempt, max_attempts, envelope, waited_ms (from becoming
-- queued to this lease: the queue latency, measured on Redis's clock).
-- Every step is bounded (at most 1000 due jobs, 100 expired leases, max_jobs fetched), so a
-- call costs the same whatever the backlog.
local prefix = ARGV[1]
local worker = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local max_jobs = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local queued = prefix .. 'queued'
local running = prefix .. 'running'

local fmt = redis.call('GET', prefix .. 'format')
if fmt and fmt ~= '2' then
  return redis.error_reply('ERR atr-dist fetch: this queue is in wire format ' .. fmt ..
    '; this worker speaks format 2 (docs/wire-format.md, "Versions")')
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
  -- Nothing was ever enqueued in format 2: either there is nothing to do, or the jobs are
  -- in format 1 and must be moved first.
  if holds_jobs() then
    return redis.error_reply('ERR atr-dist fetch: this queue holds jobs but has no format key, ' ..
      'so it is in wire format 1; run `atr-dist queue migrate` (docs/wire-format.md, "Versions")')
  end
  return {}
end
if redis.call('EXISTS', prefix .. 'paused') == 1 then
  return {}
end

local function event(id, name, attempt, message)
  local key = prefix .. 'events:' .. id
  redis.call('RPUSH', key, cjson.encode({at = now, event = name, attempt = attempt, message = message}))
  redis.call('LTRIM', key, -50, -1)
end

-- Due delayed jobs and due retries become queued, in due order.
for _, set in ipairs({'scheduled', 'retrying'}) do
  local key = prefix .. set
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', key, id)
    redis.call('HSET', prefix .. 'job:' .. id, 'state', 'queued', 'queued_at', now)
    redis.call('RPUSH', queued, id)
  end
end

-- Leases that ran out belong to workers that died or stalled: queue the job again (at the
-- front: it was due already), or give up when it has used all its attempts, so a job that
-- kills its worker cannot loop forever.
local expired = redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, 100)
local recovered, died = 0, 0
for _, id in ipairs(expired) do
  local job = prefix .. 'job:' .. id
  local f = redis.call('HMGET', job, 'attempt', 'max_attempts', 'worker')
  local attempt = tonumber(f[1]) or 0
  local max = tonumber(f[2]) or 1
  redis.call('ZREM', running, id)
  redis.call('HDEL', job, 'worker')
  local message = 'lease of worker ' .. tostring(f[3]) .. ' expired (worker died or stalled)'
  if attempt >= max then
    message = message .. '; no attempts left'
    redis.call('HSET', job, 'state', 'dead', 'finished_at', now, 'error_class', 'transient', 'last_error', message)
    redis.call('ZADD', prefix .. 'dead', now, id)
    event(id, 'dead', attempt, message)
    died = died + 1
  else
    redis.call('HSET', job, 'state', 'queued', 'queued_at', now, 'last_error', message)
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
  return {}
end
-- Leases are added to `running` in one ZADD per call, and envelopes read in one HMGET.
-- Counters rather than `#t + 1` in these loops: they run for every job of the batch.
local leases, leased, attempts, maxes, waited = {}, {}, {}, {}, {}
local n = 0
local expiry = tostring(now + lease_ms)
local now_s = tostring(now)
for _, id in ipairs(ids) do
  local job = prefix .. 'job:' .. id
  local f = redis.call('HMGET', job, 'state', 'attempt', 'max_attempts', 'queued_at', 'enqueued_at')
  -- A list entry whose job is no longer queued (purged, or cancelled and re-queued by an
  -- operator in between) is stale: drop it.
  if f[1] == 'queued' then
    local attempt = (tonumber(f[2]) or 0) + 1
    redis.call('HSET', job, 'state', 'running', 'attempt', attempt, 'worker', worker, 'started_at', now_s)
    n = n + 1
    leases[2 * n - 1] = expiry
    leases[2 * n] = id
    leased[n] = id
    attempts[n] = attempt
    maxes[n] = f[3]
    waited[n] = math.max(0, now - (tonumber(f[4] or f[5]) or now))
  end
end
if n == 0 then
  return {}
end
redis.call('ZADD', running, unpack(leases))
local envelopes = redis.call('HMGET', prefix .. 'envelopes', unpack(leased))
local out = {}
for k = 1, n do
  local base = 5 * (k - 1)
  out[base + 1] = leased[k]
  out[base + 2] = attempts[k]
  out[base + 3] = maxes[k]
  -- A job without an envelope (written by hand) is still leased, as an empty string, and
  -- then dead-lettered as malformed by the worker.
  out[base + 4] = envelopes[k] or ''
  out[base + 5] = waited[k]
end
return out
