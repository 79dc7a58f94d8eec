-- atr-dist wire format v7: fetch (docs/wire-format.md, "fetch").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, worker_id, lease_ms, max_jobs, wait_ms (optional, 0 = do not wait)
-- Moves due scheduled and retrying jobs to queued, recovers expired leases, then leases up
-- to max_jobs queued jobs to worker_id.
-- Returns now_ms (Redis's clock), wait_ms, then per leased job 3 values:
--   id, lease, queued_at (or '')
-- wait_ms is 0 unless the worker asked to wait and there was nothing to lease: then it is how
-- long the worker may block on `wake` (BLPOP) before it fetches again: at most the wait_ms
-- asked for, and no later than the next scheduled job, retry or lease falls due. The worker
-- is registered in `idle` until then, so that the scripts that make work ready push a token
-- onto `wake` for it (docs/wire-format.md, "Waking idle workers").
-- where lease is the token
-- `<max_attempts> <enqueued_ms> <batch> <attempt> <started_ms> <worker_id>`
-- that its ack and heartbeat must present: the job record after its state word.
-- The envelopes are not in the reply: the worker reads them with a plain HMGET of
-- `env:<batch>`, the batch being in the token (a running job's envelope does not change). Passing a string through Lua
-- costs far more than the lookup: Redis's Lua hashes every byte of every string it makes,
-- and an envelope is most of a job's bytes.
-- Every step is bounded (at most 1000 due jobs, 100 expired leases, max_jobs fetched), so a
-- call costs the same whatever the backlog; and the common path is a handful of variadic
-- commands for the whole batch, never one command per job.
local prefix = ARGV[1]
local worker = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local max_jobs = tonumber(ARGV[4])
local wait_ms = tonumber(ARGV[5] or '') or 0
-- Arguments are checked before anything is written: a call that fails half-way would have
-- popped jobs off `queued` without leasing them. (A number that is not finite fails
-- `x - x == 0`: inf - inf and nan - nan are nan.)
local function finite(x)
  return x ~= nil and x - x == 0
end
if worker == nil or not string.match(worker, '^%S+$') or not finite(lease_ms) or lease_ms < 0
  or not finite(max_jobs) or max_jobs < 1 or max_jobs > 1000 or max_jobs ~= math.floor(max_jobs)
  or not finite(wait_ms) or wait_ms < 0 then
  return redis.error_reply('ERR atr-dist fetch: expected worker_id (no spaces), lease_ms >= 0, ' ..
    'max_jobs 1 to 1000, wait_ms >= 0 (or none)')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local queued = prefix .. 'queued'
local running = prefix .. 'running'
local jobs = prefix .. 'jobs'
local queued_at_key = prefix .. 'queued_at'
local RUNNING_KEEPER = '~keeper: a permanent member that keeps this set out of the listpack encoding (docs/wire-format.md)'

local idle = prefix .. 'idle'

-- Nothing to lease: how long this worker may wait for a wake-up, registering it in `idle`
-- until then. Its wait ends when the next scheduled job, retry or lease falls due (`running`'s
-- lowest score; the keeper's is +inf), unless `only_asked` (a paused queue, where nothing
-- falls due: `queue resume` wakes it).
local function wait_for_work(only_asked)
  if wait_ms <= 0 then
    return 0
  end
  local until_ms = now + wait_ms
  if not only_asked then
    for _, set in ipairs({'scheduled', 'retrying', 'running'}) do
      local first = redis.call('ZRANGE', prefix .. set, 0, 0, 'WITHSCORES')
      local at = tonumber(first[2])
      if at and at < until_ms then
        until_ms = at
      end
    end
  end
  if until_ms <= now then
    return 0
  end
  -- Registrations whose wait is over go first, so `idle` holds only waiting workers.
  redis.call('ZREMRANGEBYSCORE', idle, '-inf', now)
  redis.call('ZADD', idle, until_ms, worker)
  return until_ms - now
end

-- Wakes the workers waiting in `idle`: one token each on `wake`. The same function is in
-- every script that makes work ready (a script cannot load another).
local function wake()
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

local fmt = redis.call('GET', prefix .. 'format')
-- 8 is 7's layout on a queue that may be sharded (docs/wire-format.md, "Shards").
if fmt and fmt ~= '7' and fmt ~= '8' then
  return redis.error_reply('ERR atr-dist fetch: this queue is in wire format ' .. fmt ..
    '; this worker speaks formats 7 and 8; run `atr-dist queue migrate` (docs/wire-format.md, "Versions")')
end
-- A queue without a `format` key is either new or a version 1 queue, which never had one.
-- (The same function is in enqueue.lua: a script cannot load another.)
-- (An empty list or set does not exist in Redis, and EXISTS does not care about types.)
local function holds_jobs()
  return redis.call('EXISTS', prefix .. 'queued', prefix .. 'scheduled', prefix .. 'retrying',
    prefix .. 'running', prefix .. 'done', prefix .. 'dead', prefix .. 'cancelled') > 0
end
if not fmt then
  -- Nothing was ever enqueued in format 7: either there is nothing to do, or the jobs are
  -- in format 1 and must be moved first.
  if holds_jobs() then
    return redis.error_reply('ERR atr-dist fetch: this queue holds jobs but has no format key, ' ..
      'so it is in wire format 1; run `atr-dist queue migrate` (docs/wire-format.md, "Versions")')
  end
  return {now, wait_for_work(true)}
end
if redis.call('EXISTS', prefix .. 'paused') == 1 then
  return {now, wait_for_work(true)}
end

local function event(id, name, attempt, message)
  local key = prefix .. 'events:' .. id
  redis.call('RPUSH', key, cjson.encode({at = now, event = name, attempt = attempt, message = message}))
  redis.call('LTRIM', key, -50, -1)
end

-- The record with its state word replaced.
local function with_state(record, state)
  return state .. string.match(record, '^%a+(.*)$')
end

-- Jobs this call made ready (due, or recovered from an expired lease): more than this worker
-- may take, so the workers waiting for work are woken if any is left.
local readied = 0

-- Due delayed jobs and due retries become queued, in due order.
for _, set in ipairs({'scheduled', 'retrying'}) do
  local key = prefix .. set
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    local records = redis.call('HMGET', jobs, unpack(due))
    local new_records, queued_at, ready = {}, {}, {}
    for k, id in ipairs(due) do
      -- A set entry without a record (written by hand) is dropped.
      if records[k] then
        ready[#ready + 1] = id
        new_records[#new_records + 1] = id
        new_records[#new_records + 1] = with_state(records[k], 'queued')
        queued_at[#queued_at + 1] = id
        queued_at[#queued_at + 1] = now
      end
    end
    redis.call('ZREM', key, unpack(due))
    if #ready > 0 then
      redis.call('HSET', jobs, unpack(new_records))
      redis.call('HSET', queued_at_key, unpack(queued_at))
      redis.call('RPUSH', queued, unpack(ready))
      readied = readied + #ready
    end
  end
end

-- Leases that ran out belong to workers that died or stalled: queue the job again (at the
-- front: it was due already), or give up when it has used all its attempts, so a job that
-- kills its worker cannot loop forever. Rare, so one job at a time.
-- A job whose cancel was pending ends cancelled: the operator's cancel is honoured by whoever
-- finds the lease expired, and the job never runs again.
local expired = redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, 100)
local recovered, died, cancelled = 0, 0, 0
local dead_ids, cancelled_ids = {}, {}
for _, id in ipairs(expired) do
  redis.call('ZREM', running, id)
  local record = redis.call('HGET', jobs, id)
  if record then
    local max, attempt, holder = string.match(record, '^%a+ (%d+) %d+ %d+ (%d+) %d+ (%S+)')
    max = tonumber(max) or 1
    attempt = tonumber(attempt) or 0
    local message = 'lease of worker ' .. tostring(holder) .. ' expired (worker died or stalled)'
    if redis.call('HDEL', prefix .. 'cancel_requested', id) == 1 then
      message = message .. ' while its cancel was pending; cancelled'
      redis.call('HSET', jobs, id, with_state(record, 'cancelled'))
      redis.call('HSET', prefix .. 'last_error', id, message)
      redis.call('ZADD', prefix .. 'cancelled', now, id)
      event(id, 'cancelled', attempt, message)
      cancelled = cancelled + 1
      cancelled_ids[cancelled] = id
    elseif attempt >= max then
      message = message .. '; no attempts left'
      redis.call('HSET', jobs, id, with_state(record, 'dead'))
      redis.call('HSET', prefix .. 'error_class', id, 'transient')
      redis.call('HSET', prefix .. 'last_error', id, message)
      redis.call('ZADD', prefix .. 'dead', now, id)
      event(id, 'dead', attempt, message)
      -- No worker is left to report on it: it has no result (docs/wire-format.md, "Results").
      died = died + 1
      dead_ids[died] = id
    else
      redis.call('HSET', jobs, id, with_state(record, 'queued'))
      redis.call('HSET', queued_at_key, id, now)
      redis.call('HSET', prefix .. 'last_error', id, message)
      redis.call('LPUSH', queued, id)
      event(id, 'lease_expired', attempt, message)
      recovered = recovered + 1
    end
  end
end
if recovered > 0 then
  redis.call('HINCRBY', prefix .. 'stats', 'recovered', recovered)
  readied = readied + recovered
end
if died > 0 then
  redis.call('HINCRBY', prefix .. 'stats', 'dead', died)
  redis.call('XADD', prefix .. 'results', 'MAXLEN', '~', 100000, '*',
    'state', 'dead', 'atr_status', 'BROKEN', 'ids', table.concat(dead_ids, ' '))
end
if cancelled > 0 then
  redis.call('HINCRBY', prefix .. 'stats', 'cancelled', cancelled)
  redis.call('XADD', prefix .. 'results', 'MAXLEN', '~', 100000, '*',
    'state', 'cancelled', 'atr_status', 'FAILED', 'ids', table.concat(cancelled_ids, ' '))
end

local ids = redis.call('LPOP', queued, math.min(max_jobs, 1000))
if readied > 0 and redis.call('EXISTS', queued) == 1 then
  wake()
end
if not ids then
  return {now, wait_for_work(false)}
end
local records = redis.call('HMGET', jobs, unpack(ids))
-- `queued_at` holds only queued jobs that were re-queued, and most batches have none: look
-- it up only when it is not empty, and take the batch's entries out once leased.
local queued_at = {}
local requeued = redis.call('EXISTS', queued_at_key) == 1
if requeued then
  queued_at = redis.call('HMGET', queued_at_key, unpack(ids))
end
-- The token's tail and the lease expiry are the same for the whole batch: built once. (Lua
-- formats a number with sprintf whenever it becomes a string, which per job would cost
-- more than the rest of the loop.)
local tail = ' ' .. tostring(now) .. ' ' .. worker
local expiry = tostring(now + lease_ms)
local new_records, running_scores = {}, {}
local out = {now, 0}
local n, o = 0, 2
for k = 1, #ids do
  -- A list entry whose job is no longer queued (purged, or cancelled and re-queued by an
  -- operator in between) is stale: drop it.
  local meta, attempt
  if records[k] then
    meta, attempt = string.match(records[k], '^queued (%d+ %d+ %d+) ?(%d*)')
  end
  if meta then
    local id = ids[k]
    local next_attempt = '1'
    if attempt ~= '' then
      next_attempt = tostring(tonumber(attempt) + 1)
    end
    local lease = meta .. ' ' .. next_attempt .. tail
    n = n + 1
    new_records[2 * n - 1] = id
    new_records[2 * n] = 'running ' .. lease
    running_scores[2 * n - 1] = expiry
    running_scores[2 * n] = id
    out[o + 1] = id
    out[o + 2] = lease
    out[o + 3] = queued_at[k] or ''
    o = o + 3
  end
end
if requeued then
  redis.call('HDEL', queued_at_key, unpack(ids))
end
if n > 0 then
  redis.call('HSET', jobs, unpack(new_records))
  -- The keeper (docs/wire-format.md, "Keys"): a member longer than 64 bytes, so Redis never
  -- stores `running` as a listpack, whose inserts and removals scan the whole set; with a
  -- worker's usual 100-odd leases that scan costs more than the rest of a job's fetch and
  -- ack. Scored +inf, it never expires, and readers that range by score skip it. Added
  -- first, so a new set is made in the right encoding.
  redis.call('ZADD', running, 'NX', 'inf', RUNNING_KEEPER)
  redis.call('ZADD', running, unpack(running_scores))
end
return out
