-- atr-dist wire format v4: moving a version 1 or 2 queue to version 4 (docs/wire-format.md,
-- "Versions"). Versions 3 and 4 lay jobs out alike, so this is the layout both share; a
-- version 3 queue needs no script, only its new `format`.
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, state, offset, limit
-- Moves the jobs at positions offset .. offset + limit - 1 of `state`'s list or set from
-- their `job:<id>` hash (and, in version 1, their `idem:<key>` string) to their version 4
-- record in `jobs` and the other per-queue hashes, and deletes the old keys. A job without a
-- `job:<id>` hash has been moved already and is left as it is, so running it again is safe.
-- Done jobs are also appended, in the order they finished, to `migrating-done`, the list
-- that replaces the `done` sorted set once every step has run.
-- No job changes state or position, so offsets stay valid from one call to the next; run it
-- with every worker and producer stopped, then replace `done` with `migrating-done` and set
-- `format` to 4 (`atr-dist queue migrate` does all of this).
-- Returns {ids looked at, jobs moved}; call again with offset + limit while the first is
-- `limit`.
local prefix = ARGV[1]
local state = ARGV[2]
local offset = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local fmt = redis.call('GET', prefix .. 'format')
if fmt and fmt ~= '2' then
  return redis.error_reply('ERR atr-dist migrate: this queue is in wire format ' .. fmt ..
    '; only a version 1 or 2 queue has jobs to move')
end
local ids, finished = {}, {}
if state == 'queued' then
  ids = redis.call('LRANGE', prefix .. 'queued', offset, offset + limit - 1)
elseif state == 'scheduled' or state == 'retrying' or state == 'running' or state == 'done'
    or state == 'dead' or state == 'cancelled' then
  local scored = redis.call('ZRANGE', prefix .. state, offset, offset + limit - 1, 'WITHSCORES')
  for k = 1, #scored, 2 do
    ids[#ids + 1] = scored[k]
    finished[#finished + 1] = scored[k + 1]
  end
else
  return redis.error_reply('ERR atr-dist migrate: unknown state ' .. tostring(state))
end
local function set(field, id, value)
  if value and value ~= '' then
    redis.call('HSET', prefix .. field, id, value)
  end
end
local moved = 0
for k, id in ipairs(ids) do
  local job = prefix .. 'job:' .. id
  local f = redis.call('HMGET', job, 'state', 'attempt', 'max_attempts', 'enqueued_at',
    'queued_at', 'started_at', 'worker', 'error_class', 'last_error', 'cancel_requested',
    'envelope', 'idempotency_key')
  if f[1] then
    -- Version 1 kept the envelope and the key with the job.
    if f[11] then
      redis.call('HSET', prefix .. 'envelopes', id, f[11])
    end
    if f[12] then
      -- A key that names another job is that job's to move.
      local idem_key = prefix .. 'idem:' .. f[12]
      if redis.call('GET', idem_key) == id then
        redis.call('HSET', prefix .. 'idempotency', f[12], id)
        redis.call('DEL', idem_key)
      end
    end
    local record = f[1] .. ' ' .. (f[3] or '1') .. ' ' .. (f[4] or '0')
    local attempt = tonumber(f[2]) or 0
    if attempt > 0 or f[1] == 'done' then
      record = record .. ' ' .. attempt .. ' ' .. (f[6] or '0') .. ' ' .. (f[7] or 'unknown')
    end
    if f[1] == 'done' then
      record = record .. ' ' .. string.format('%d', tonumber(finished[k]) or 0)
    end
    redis.call('HSET', prefix .. 'jobs', id, record)
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
return {#ids, moved}
