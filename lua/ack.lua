-- atr-dist wire format v2: ack (docs/wire-format.md, "ack").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, worker_id, then 6 values per job:
--   id, attempt, outcome, delay_ms, error_class, message
-- outcome: done | retry | dead | cancelled | release | defer
-- Only the lease holder of that very attempt may ack; anything else is 'stale' and changes
-- nothing (the lease expired and the job went to another worker).
-- Returns, per job, the state it is now in, or 'stale'.
local prefix = ARGV[1]
local worker = ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local running = prefix .. 'running'
local counts = {done = 0, failed = 0, retried = 0, dead = 0, cancelled = 0}

if (#ARGV - 2) % 6 ~= 0 then
  return redis.error_reply('ERR atr-dist ack: arguments must come in groups of 6 per job')
end

local function event(id, name, attempt, class, message)
  local key = prefix .. 'events:' .. id
  redis.call('RPUSH', key, cjson.encode({at = now, event = name, attempt = attempt, error_class = class, message = message}))
  redis.call('LTRIM', key, -50, -1)
end

local function to_dead(job, id, attempt, class, message)
  redis.call('HSET', job, 'state', 'dead', 'finished_at', now, 'error_class', class, 'last_error', message)
  redis.call('ZADD', prefix .. 'dead', now, id)
  event(id, 'dead', attempt, class, message)
  counts.dead = counts.dead + 1
  counts.failed = counts.failed + 1
  return 'dead'
end

local out = {}
-- Done jobs leave `running` and enter `done` in one ZREM and one ZADD per call.
local now_s = tostring(now)
local done_ids, done_scores = {}, {}
-- Counters rather than `#t + 1` in this loop: it runs for every job of the batch.
local n_out, n_done = 0, 0
for i = 3, #ARGV, 6 do
  local id = ARGV[i]
  local attempt = tonumber(ARGV[i + 1])
  local outcome = ARGV[i + 2]
  local delay = tonumber(ARGV[i + 3]) or 0
  local class = ARGV[i + 4]
  local message = ARGV[i + 5]
  local job = prefix .. 'job:' .. id
  local f = redis.call('HMGET', job, 'state', 'worker', 'attempt', 'cancel_requested')
  local result
  if f[1] ~= 'running' or f[2] ~= worker or tonumber(f[3]) ~= attempt then
    result = 'stale'
  elseif outcome == 'done' then
    -- The common case, kept to the fewest commands: `worker` stays as the last holder.
    if f[4] then
      redis.call('HDEL', job, 'cancel_requested')
    end
    redis.call('HSET', job, 'state', 'done', 'finished_at', now_s)
    n_done = n_done + 1
    done_ids[n_done] = id
    done_scores[2 * n_done - 1] = now_s
    done_scores[2 * n_done] = id
    counts.done = counts.done + 1
    result = 'done'
  else
    redis.call('ZREM', running, id)
    if f[4] then
      redis.call('HDEL', job, 'cancel_requested')
    end
    if outcome == 'retry' then
      local max = tonumber(redis.call('HGET', job, 'max_attempts')) or 1
      if attempt >= max then
        result = to_dead(job, id, attempt, class,
          'gave up after ' .. attempt .. ' attempt(s); last error: ' .. message)
      else
        local run_at = now + delay
        redis.call('HSET', job, 'state', 'retrying', 'run_at', run_at, 'error_class', class, 'last_error', message)
        redis.call('ZADD', prefix .. 'retrying', run_at, id)
        event(id, 'retry_scheduled', attempt, class, message .. ' (next attempt in ' .. delay .. ' ms)')
        counts.retried = counts.retried + 1
        counts.failed = counts.failed + 1
        result = 'retrying'
      end
    elseif outcome == 'dead' then
      result = to_dead(job, id, attempt, class, message)
    elseif outcome == 'cancelled' then
      redis.call('HSET', job, 'state', 'cancelled', 'finished_at', now, 'last_error', message)
      redis.call('ZADD', prefix .. 'cancelled', now, id)
      event(id, 'cancelled', attempt, class, message)
      counts.cancelled = counts.cancelled + 1
      result = 'cancelled'
    elseif outcome == 'defer' then
      -- Not this worker's turn (the distribution is locked by another job): wait and try
      -- again without spending an attempt.
      local run_at = now + delay
      redis.call('HSET', job, 'state', 'retrying', 'attempt', attempt - 1, 'run_at', run_at)
      redis.call('ZADD', prefix .. 'retrying', run_at, id)
      event(id, 'deferred', attempt, class, message)
      result = 'retrying'
    elseif outcome == 'release' then
      -- Handed back unfinished (graceful shutdown): the attempt does not count.
      redis.call('HSET', job, 'state', 'queued', 'attempt', attempt - 1, 'queued_at', now)
      redis.call('LPUSH', prefix .. 'queued', id)
      event(id, 'released', attempt, class, message)
      result = 'queued'
    else
      return redis.error_reply('ERR atr-dist ack: unknown outcome ' .. tostring(outcome))
    end
  end
  n_out = n_out + 1
  out[n_out] = result
end

for i = 1, #done_ids, 1000 do
  redis.call('ZREM', running, unpack(done_ids, i, math.min(i + 999, #done_ids)))
  redis.call('ZADD', prefix .. 'done', unpack(done_scores, 2 * i - 1, math.min(2 * i + 1998, #done_scores)))
end

local stats = prefix .. 'stats'
local tp = prefix .. 'tp:' .. math.floor(now / 60000)
local touched = false
for name, n in pairs(counts) do
  if n > 0 then
    redis.call('HINCRBY', stats, name, n)
    redis.call('HINCRBY', tp, name, n)
    touched = true
  end
end
if touched then
  redis.call('EXPIRE', tp, 7200)
end
return out
