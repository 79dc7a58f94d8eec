-- atr-dist wire format v2: moving a version 1 queue to version 2 (docs/wire-format.md, "Versions").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, state, offset, limit
-- Moves the jobs at positions offset .. offset + limit - 1 of `state`'s list or set to the
-- version 2 layout: the envelope into the `envelopes` hash, the idempotency key from its
-- `idem:<key>` string into the `idempotency` hash, and the hash's copied fields dropped.
-- Jobs already in the version 2 layout are left as they are, so running it again is safe.
-- No job changes state or position, so offsets stay valid from one call to the next; run it
-- with every worker and producer stopped, then set `format` to 2 (`atr-dist queue migrate`
-- does all of this).
-- Returns {ids looked at, jobs moved}; call again with offset + limit while the first is
-- `limit`.
local prefix = ARGV[1]
local state = ARGV[2]
local offset = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local fmt = redis.call('GET', prefix .. 'format')
if fmt and fmt ~= '2' then
  return redis.error_reply('ERR atr-dist migrate: this queue is in wire format ' .. fmt ..
    '; only a version 1 queue can be moved to version 2')
end
local ids
if state == 'queued' then
  ids = redis.call('LRANGE', prefix .. 'queued', offset, offset + limit - 1)
elseif state == 'scheduled' or state == 'retrying' or state == 'running' or state == 'done'
    or state == 'dead' or state == 'cancelled' then
  ids = redis.call('ZRANGE', prefix .. state, offset, offset + limit - 1)
else
  return redis.error_reply('ERR atr-dist migrate: unknown state ' .. tostring(state))
end
local envelopes = prefix .. 'envelopes'
local idempotency = prefix .. 'idempotency'
local moved = 0
for _, id in ipairs(ids) do
  local job = prefix .. 'job:' .. id
  local f = redis.call('HMGET', job, 'envelope', 'idempotency_key')
  if f[1] then
    redis.call('HSET', envelopes, id, f[1])
    if f[2] then
      -- A key that names another job is that job's to move.
      local idem_key = prefix .. 'idem:' .. f[2]
      if redis.call('GET', idem_key) == id then
        redis.call('HSET', idempotency, f[2], id)
        redis.call('DEL', idem_key)
      end
    end
    redis.call('HDEL', job, 'envelope', 'idempotency_key', 'kind', 'release', 'platform')
    moved = moved + 1
  end
end
return {#ids, moved}
