-- atr-dist wire format v1: purge (docs/wire-format.md, "purge").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, state (done | dead | cancelled), older_than_ms, limit
-- Deletes up to `limit` jobs that entered `state` more than older_than_ms ago, with their
-- events and idempotency keys. Returns how many were deleted; call again while it returns
-- `limit`.
local prefix = ARGV[1]
local state = ARGV[2]
local older_than = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
if state ~= 'done' and state ~= 'dead' and state ~= 'cancelled' then
  return redis.error_reply('ERR atr-dist purge: only done, dead or cancelled jobs can be purged')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local set = prefix .. state
local ids = redis.call('ZRANGEBYSCORE', set, '-inf', now - older_than, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local job = prefix .. 'job:' .. id
  local idem = redis.call('HGET', job, 'idempotency_key')
  if idem then
    local idem_key = prefix .. 'idem:' .. idem
    -- Only if it still names this job.
    if redis.call('GET', idem_key) == id then
      redis.call('DEL', idem_key)
    end
  end
  redis.call('DEL', job, prefix .. 'events:' .. id)
  redis.call('ZREM', set, id)
end
return #ids
