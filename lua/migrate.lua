-- atr-dist wire format v7: moving a version 1, 2, 3 or 4 queue to version 5
-- (docs/wire-format.md, "Versions").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, state, offset, limit
-- Moves the jobs at positions offset .. offset + limit - 1 of `state`'s list or set to their
-- version 5 record, whose fourth word is the job's envelope batch: 0, the batch of every
-- job moved by `queue migrate`. Before the first call, `atr-dist queue migrate` has moved the
-- queue's `envelopes` hash (versions 2 to 4) to `env:0`.
-- * Versions 1 and 2: from the `job:<id>` hash (and, in version 1, the envelope in it and the
--   `idem:<key>` string) to the record in `jobs` and the other per-queue hashes; the old
--   keys are deleted. A job without a `job:<id>` hash has been moved already. Done jobs are
--   also appended, in the order they finished, to `migrating-done`, the list that replaces
--   the `done` sorted set once every step has run.
-- * Versions 3 and 4: the record gains its batch word; a record that has four words before
--   the attempt (or, done, the finishing time) has been moved already.
-- So running it again is safe. No job changes state or position, so offsets stay valid from
-- one call to the next; run it with every worker and producer stopped, then (versions 1 and
-- 2) replace `done` with `migrating-done`, and set `format` to 5 (`atr-dist queue migrate`
-- does all of this).
-- Returns {positions looked at, jobs among them (the keeper of `running` is not one), jobs
-- moved}; call again with offset + limit while the first is `limit`.
local prefix = ARGV[1]
local state = ARGV[2]
local offset = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local fmt = redis.call('GET', prefix .. 'format')
local from_job_hashes = not fmt or fmt == '2'
if not from_job_hashes and fmt ~= '3' and fmt ~= '4' then
  return redis.error_reply('ERR atr-dist migrate: this queue is in wire format ' .. fmt ..
    '; only a version 1 to 4 queue has jobs to move')
end
local ids, finished = {}, {}
-- Positions looked at, which the caller's offsets count (the keeper included).
local looked
-- `done` is a sorted set in versions 1 and 2, a list since.
if state == 'queued' or (state == 'done' and not from_job_hashes) then
  ids = redis.call('LRANGE', prefix .. state, offset, offset + limit - 1)
  looked = #ids
elseif state == 'scheduled' or state == 'retrying' or state == 'running' or state == 'done'
    or state == 'dead' or state == 'cancelled' then
  local scored = redis.call('ZRANGE', prefix .. state, offset, offset + limit - 1, 'WITHSCORES')
  looked = #scored / 2
  for k = 1, #scored, 2 do
    -- The keeper of `running` (version 4) is not a job.
    if scored[k + 1] ~= 'inf' then
      ids[#ids + 1] = scored[k]
      finished[#finished + 1] = scored[k + 1]
    end
  end
else
  return redis.error_reply('ERR atr-dist migrate: unknown state ' .. tostring(state))
end
local jobs = prefix .. 'jobs'
local moved = 0

if not from_job_hashes then
  -- Version 3 and 4 records: `<state> <max> <enqueued>`, plus ` <attempt> <started>
  -- <worker>` once leased, plus ` <finished>` when done. The batch goes after the third word.
  for _, id in ipairs(ids) do
    local record = redis.call('HGET', jobs, id)
    if record then
      local words = select(2, string.gsub(record, '%S+', ''))
      local done = string.match(record, '^done ') ~= nil
      if words == 3 or words == 6 or (done and words == 7) then
        redis.call('HSET', jobs, id, (string.gsub(record, '^(%a+ %d+ %d+)', '%1 0', 1)))
        moved = moved + 1
      end
    end
  end
  return {looked, #ids, moved}
end

local function set(field, id, value)
  if value and value ~= '' then
    redis.call('HSET', prefix .. field, id, value)
  end
end
for k, id in ipairs(ids) do
  local job = prefix .. 'job:' .. id
  local f = redis.call('HMGET', job, 'state', 'attempt', 'max_attempts', 'enqueued_at',
    'queued_at', 'started_at', 'worker', 'error_class', 'last_error', 'cancel_requested',
    'envelope', 'idempotency_key')
  if f[1] then
    -- Version 1 kept the envelope and the key with the job.
    if f[11] then
      redis.call('HSET', prefix .. 'env:0', id, f[11])
    end
    if f[12] then
      -- A key that names another job is that job's to move.
      local idem_key = prefix .. 'idem:' .. f[12]
      if redis.call('GET', idem_key) == id then
        redis.call('HSET', prefix .. 'idempotency', f[12], id)
        redis.call('DEL', idem_key)
      end
    end
    local record = f[1] .. ' ' .. (f[3] or '1') .. ' ' .. (f[4] or '0') .. ' 0'
    local attempt = tonumber(f[2]) or 0
    if attempt > 0 or f[1] == 'done' then
      record = record .. ' ' .. attempt .. ' ' .. (f[6] or '0') .. ' ' .. (f[7] or 'unknown')
    end
    if f[1] == 'done' then
      record = record .. ' ' .. string.format('%d', tonumber(finished[k]) or 0)
    end
    redis.call('HSET', jobs, id, record)
    if f[5] ~= f[4] and f[1] == 'queued' then
      set('queued_at', id, f[5])
    end
    set('error_class', id, f[8])
    set('last_error', id, f[9])
    set('cancel_requested', id, f[10])
    redis.call('DEL', job)
    moved = moved + 1
  end
end
if state == 'done' and #ids > 0 then
  redis.call('RPUSH', prefix .. 'migrating-done', unpack(ids))
end
return {looked, #ids, moved}
