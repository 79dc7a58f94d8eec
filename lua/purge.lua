-- atr-dist wire format v3: purge (docs/wire-format.md, "purge").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, state (done | dead | cancelled), older_than_ms, limit (at most 1000)
-- Deletes up to `limit` jobs that entered `state` more than older_than_ms ago, with all
-- their fields, events and idempotency keys. Returns how many were deleted; call again while
-- it returns `limit`.
local prefix = ARGV[1]
local state = ARGV[2]
local older_than = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
if state ~= 'done' and state ~= 'dead' and state ~= 'cancelled' then
  return redis.error_reply('ERR atr-dist purge: only done, dead or cancelled jobs can be purged')
end
if not limit or limit < 1 or limit > 1000 then
  return redis.error_reply('ERR atr-dist purge: limit must be 1 to 1000')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local set = prefix .. state
local ids = redis.call('ZRANGEBYSCORE', set, '-inf', now - older_than, 'LIMIT', 0, limit)
if #ids == 0 then
  return 0
end
local envelopes = redis.call('HMGET', prefix .. 'envelopes', unpack(ids))
local idempotency = prefix .. 'idempotency'
local events = {}
for k, id in ipairs(ids) do
  -- The job's idempotency key is in its envelope. An envelope that is not JSON with an
  -- idempotency_key (a malformed job) leaves its key behind; enqueue treats a key whose
  -- job is gone as free, so the leftover blocks nothing.
  local envelope = envelopes[k]
  if envelope then
    local ok, decoded = pcall(cjson.decode, envelope)
    if ok and type(decoded) == 'table' and type(decoded.idempotency_key) == 'string'
        and redis.call('HGET', idempotency, decoded.idempotency_key) == id then
      redis.call('HDEL', idempotency, decoded.idempotency_key)
    end
  end
  events[k] = prefix .. 'events:' .. id
end
-- Every per-job field hash of docs/wire-format.md, "Keys".
for _, field in ipairs({'envelopes', 'state', 'meta', 'lease', 'queued_at', 'error_class',
    'last_error', 'cancel_requested'}) do
  redis.call('HDEL', prefix .. field, unpack(ids))
end
redis.call('DEL', unpack(events))
redis.call('ZREM', set, unpack(ids))
return #ids
