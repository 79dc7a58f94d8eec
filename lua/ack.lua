-- atr-dist wire format v7: ack (docs/wire-format.md, "ack").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, n_done, then
--   n_done triples for attempts that succeeded: id, lease, result
--   then 7 values per other job: id, lease, outcome, delay_ms, error_class, message, result
--   where outcome is retry | dead | cancelled | release | defer, and result is the worker's
--   JSON report of the job (docs/wire-format.md, "Results") or ''
-- Jobs that end here (done, dead, cancelled) are named in the `results` stream, one entry
-- per state and ATR status of this call, and their result, when the worker sent one, is
-- kept in the `result` hash: written by this script, in the same step as the transitions,
-- so no end goes unreported.
-- `lease` is the token fetch.lua handed out with the job. Only the holder of that very lease
-- may ack: a job whose record is not `running <lease>` is 'stale' and nothing changes (the
-- lease expired and the job went to another worker, or this ack was applied already).
-- Returns, per job in argument order, the state it is now in, or 'stale'.
--
-- Success, the common case, is a pair of values and a few variadic commands for the whole
-- batch; the other outcomes are rare and written one job at a time.
local prefix = ARGV[1]
local n_done = tonumber(ARGV[2])
if n_done == nil or n_done < 0 or n_done ~= math.floor(n_done) or 2 + 3 * n_done > #ARGV
  or (#ARGV - 2 - 3 * n_done) % 7 ~= 0 then
  return redis.error_reply('ERR atr-dist ack: expected n_done, n_done triples, then groups of 7 per job')
end
local OUTCOMES = {retry = true, dead = true, cancelled = true, release = true, defer = true}
-- Check every outcome and delay before writing anything, so a bad call changes nothing. A
-- delay is a finite number of ms >= 0, or empty (0): one that is not would fail the call
-- half-way, or put the job off for ever. (inf - inf and nan - nan are nan.)
for i = 3 + 3 * n_done, #ARGV, 7 do
  if not OUTCOMES[ARGV[i + 2]] then
    return redis.error_reply('ERR atr-dist ack: unknown outcome ' .. tostring(ARGV[i + 2]))
  end
  local delay = ARGV[i + 3]
  local ms = tonumber(delay)
  if delay ~= '' and (ms == nil or ms - ms ~= 0 or ms < 0) then
    return redis.error_reply('ERR atr-dist ack: delay_ms must be a number >= 0, not ' .. delay)
  end
end
if n_done + (#ARGV - 2 - 3 * n_done) / 7 > 1000 then
  return redis.error_reply('ERR atr-dist ack: at most 1000 jobs per call')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local running = prefix .. 'running'
local jobs = prefix .. 'jobs'
local counts = {done = 0, failed = 0, retried = 0, dead = 0, cancelled = 0}
-- A job handed back to `queued`, or put in `retrying` (which may fall due before an idle
-- worker's wait ends): the waiting workers are woken at the end. Successes never are.
local readied = false

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

-- Every job's id and presented lease; the records read in one variadic call.
local ids, presented, results = {}, {}, {}
local m = 0
for i = 3, 2 + 3 * n_done, 3 do
  m = m + 1
  ids[m] = ARGV[i]
  presented[m] = ARGV[i + 1]
  results[m] = ARGV[i + 2]
end
for i = 3 + 3 * n_done, #ARGV, 7 do
  m = m + 1
  ids[m] = ARGV[i]
  presented[m] = ARGV[i + 1]
  results[m] = ARGV[i + 6]
end
if m == 0 then
  return {}
end
local records = redis.call('HMGET', jobs, unpack(ids))
-- Pending cancel requests are rare: look them up only when there are any.
local pending_cancel = redis.call('EXISTS', prefix .. 'cancel_requested') == 1

local function event(id, name, attempt, class, message)
  local key = prefix .. 'events:' .. id
  redis.call('RPUSH', key, cjson.encode({at = now, event = name, attempt = attempt, error_class = class, message = message}))
  redis.call('LTRIM', key, -50, -1)
end

-- The ends of this call's jobs, for producers (docs/wire-format.md, "Results"): ids by
-- state and ATR status, one stream entry each at the end. An entry per job cost more Redis
-- time than the rest of the ack; a consumer reads what it needs of each job from its keys.
local ended = {done = {}, BROKEN = {}, FAILED = {}, cancelled = {}}
local function report(id, state, class)
  if state == 'done' then
    ended.done[#ended.done + 1] = id
  elseif state == 'cancelled' then
    ended.cancelled[#ended.cancelled + 1] = id
  elseif class == 'transient' then
    ended.BROKEN[#ended.BROKEN + 1] = id
  else
    ended.FAILED[#ended.FAILED + 1] = id
  end
end

local function failure(id, class, message)
  redis.call('HSET', prefix .. 'error_class', id, class)
  redis.call('HSET', prefix .. 'last_error', id, message)
end

local function keep_result(id, result)
  if result ~= '' then
    redis.call('HSET', prefix .. 'result', id, result)
  end
end

local function to_dead(id, lease, attempt, class, message, result)
  redis.call('HSET', jobs, id, 'dead ' .. lease)
  failure(id, class, message)
  redis.call('ZADD', prefix .. 'dead', now, id)
  event(id, 'dead', attempt, class, message)
  keep_result(id, result)
  report(id, 'dead', class)
  counts.dead = counts.dead + 1
  counts.failed = counts.failed + 1
  return 'dead'
end

-- The record in `state` with the attempt not counted: the lease's attempt number lowered
-- by one, and with no attempt left on record, no lease at all.
local function uncounted(state, lease)
  local meta, attempt, rest = string.match(lease, '^(%d+ %d+ %d+) (%d+)( .*)$')
  attempt = tonumber(attempt) or 1
  if attempt <= 1 then
    return state .. ' ' .. meta
  end
  return state .. ' ' .. meta .. ' ' .. (attempt - 1) .. rest
end

local out = {}
local finished = ' ' .. tostring(now)
local done_ids, done_records, done_results = {}, {}, {}
local nd, nr = 0, 0
for k = 1, m do
  local id = ids[k]
  local lease = presented[k]
  local result
  if records[k] ~= 'running ' .. lease then
    result = 'stale'
  elseif k <= n_done then
    nd = nd + 1
    done_ids[nd] = id
    done_records[2 * nd - 1] = id
    -- A done job's record ends with the time it finished.
    done_records[2 * nd] = 'done ' .. lease .. finished
    if results[k] ~= '' then
      nr = nr + 1
      done_results[2 * nr - 1] = id
      done_results[2 * nr] = results[k]
    end
    result = 'done'
  else
    local i = 3 + 3 * n_done + 7 * (k - n_done - 1)
    local max, attempt = string.match(lease, '^(%d+) %d+ %d+ (%d+)')
    max = tonumber(max) or 1
    attempt = tonumber(attempt) or 1
    local outcome = ARGV[i + 2]
    local delay = tonumber(ARGV[i + 3]) or 0
    local class = ARGV[i + 4]
    local message = ARGV[i + 5]
    redis.call('ZREM', running, id)
    if pending_cancel and redis.call('HDEL', prefix .. 'cancel_requested', id) == 1
      and (outcome == 'retry' or outcome == 'release' or outcome == 'defer') then
      -- An operator cancelled the job while this attempt ran, and the attempt ended before
      -- its worker heard of it: rather than run again, the job ends cancelled.
      outcome = 'cancelled'
      message = 'cancelled while its attempt ran; the attempt ended with: ' .. message
    end
    if outcome == 'retry' then
      if attempt >= max then
        result = to_dead(id, lease, attempt, class,
          'gave up after ' .. attempt .. ' attempt(s); last error: ' .. message, results[k])
      else
        local run_at = now + delay
        redis.call('HSET', jobs, id, 'retrying ' .. lease)
        failure(id, class, message)
        redis.call('ZADD', prefix .. 'retrying', run_at, id)
        readied = true
        event(id, 'retry_scheduled', attempt, class, message .. ' (next attempt in ' .. delay .. ' ms)')
        counts.retried = counts.retried + 1
        counts.failed = counts.failed + 1
        result = 'retrying'
      end
    elseif outcome == 'dead' then
      result = to_dead(id, lease, attempt, class, message, results[k])
    elseif outcome == 'cancelled' then
      redis.call('HSET', jobs, id, 'cancelled ' .. lease)
      redis.call('HSET', prefix .. 'last_error', id, message)
      redis.call('ZADD', prefix .. 'cancelled', now, id)
      event(id, 'cancelled', attempt, class, message)
      keep_result(id, results[k])
      report(id, 'cancelled', class)
      counts.cancelled = counts.cancelled + 1
      result = 'cancelled'
    elseif outcome == 'defer' then
      -- Not this worker's turn (the distribution is locked by another job): wait and try
      -- again without spending an attempt.
      redis.call('HSET', jobs, id, uncounted('retrying', lease))
      redis.call('ZADD', prefix .. 'retrying', now + delay, id)
      readied = true
      event(id, 'deferred', attempt, class, message)
      result = 'retrying'
    else -- 'release' (outcomes were checked above)
      -- Handed back unfinished (graceful shutdown): the attempt does not count.
      redis.call('HSET', jobs, id, uncounted('queued', lease))
      redis.call('HSET', prefix .. 'queued_at', id, now)
      redis.call('LPUSH', prefix .. 'queued', id)
      readied = true
      event(id, 'released', attempt, class, message)
      result = 'queued'
    end
  end
  out[k] = result
end

if nd > 0 then
  -- `done` is a list in the order jobs finished: appending is far cheaper than a sorted-set
  -- insert, and purge takes the oldest from its head.
  redis.call('ZREM', running, unpack(done_ids))
  redis.call('RPUSH', prefix .. 'done', unpack(done_ids))
  redis.call('HSET', jobs, unpack(done_records))
  if nr > 0 then
    redis.call('HSET', prefix .. 'result', unpack(done_results))
  end
  if pending_cancel then
    redis.call('HDEL', prefix .. 'cancel_requested', unpack(done_ids))
  end
  counts.done = nd
  ended.done = done_ids
end

local RESULTS_MAXLEN = 100000
for _, group in ipairs({{'done', 'COMPLETED', ended.done}, {'dead', 'BROKEN', ended.BROKEN},
    {'dead', 'FAILED', ended.FAILED}, {'cancelled', 'FAILED', ended.cancelled}}) do
  if #group[3] > 0 then
    redis.call('XADD', prefix .. 'results', 'MAXLEN', '~', RESULTS_MAXLEN, '*',
      'state', group[1], 'atr_status', group[2], 'ids', table.concat(group[3], ' '))
  end
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
if readied then
  wake(now)
end
return out
