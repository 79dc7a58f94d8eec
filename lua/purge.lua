-- atr-dist wire format v7: purge (docs/wire-format.md, "purge").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, state (done | dead | cancelled), older_than_ms, limit (at most 1000),
--   keep (optional: absent or '' = no count limit)
-- Deletes up to `limit` jobs that entered `state` more than older_than_ms ago, or that are
-- beyond the newest `keep` jobs of the state, oldest first, with their records, envelopes
-- (from their batch's `env:<batch>`), other fields, events and idempotency keys. Returns how
-- many were deleted; call again while it returns `limit`. Workers call it in steps for the
-- queue's retention (docs/wire-format.md, "Retention"), operators with `jobs purge`.
local prefix = ARGV[1]
local state = ARGV[2]
local older_than = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local keep = nil
if ARGV[5] ~= nil and ARGV[5] ~= '' then
  keep = tonumber(ARGV[5])
  if not keep or keep < 0 then
    return redis.error_reply('ERR atr-dist purge: keep must be a number >= 0, or empty')
  end
end
if state ~= 'done' and state ~= 'dead' and state ~= 'cancelled' then
  return redis.error_reply('ERR atr-dist purge: only done, dead or cancelled jobs can be purged')
end
if not older_than then
  return redis.error_reply('ERR atr-dist purge: older_than_ms must be a number')
end
if not limit or limit < 1 or limit > 1000 then
  return redis.error_reply('ERR atr-dist purge: limit must be 1 to 1000')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - older_than
local set = prefix .. state
-- The jobs to delete, and their records (a done job's is read to find when it finished).
local ids, records
if state == 'done' then
  -- `done` is a list in the order jobs finished, each record ending with that time: take
  -- the run at its head that is beyond the newest `keep` or finished before the cutoff.
  local excess = 0
  if keep then
    excess = redis.call('LLEN', set) - keep
  end
  local head = redis.call('LRANGE', set, 0, limit - 1)
  if #head == 0 then
    return 0
  end
  records = redis.call('HMGET', prefix .. 'jobs', unpack(head))
  ids = {}
  for k, id in ipairs(head) do
    if k > excess then
      -- An entry without a record (purged by hand) goes too.
      local finished = records[k] and tonumber(string.match(records[k], ' (%d+)$'))
      if finished and finished > cutoff then
        break
      end
    end
    ids[k] = id
  end
  if #ids == 0 then
    return 0
  end
  redis.call('LTRIM', set, #ids, -1)
else
  ids = redis.call('ZRANGEBYSCORE', set, '-inf', cutoff, 'LIMIT', 0, limit)
  if keep then
    -- Both are runs from the oldest end of the set: the longer one covers the other.
    local excess = math.min(redis.call('ZCARD', set) - keep, limit)
    if excess > #ids then
      ids = redis.call('ZRANGE', set, 0, excess - 1)
    end
  end
  if #ids == 0 then
    return 0
  end
  redis.call('ZREM', set, unpack(ids))
  records = redis.call('HMGET', prefix .. 'jobs', unpack(ids))
end
-- Each job's envelope is in its batch's hash, `env:<batch>`, the batch being the fourth word
-- of its record; jobs that finish together mostly share a batch, so read and delete them per
-- batch.
local batches, order = {}, {}
for k, id in ipairs(ids) do
  local batch = records[k] and string.match(records[k], '^%a+ %d+ %d+ (%d+)')
  if batch then
    if not batches[batch] then
      batches[batch] = {}
      order[#order + 1] = batch
    end
    local members = batches[batch]
    members[#members + 1] = id
  end
end
local idempotency = prefix .. 'idempotency'
for _, batch in ipairs(order) do
  local key = prefix .. 'env:' .. batch
  local members = batches[batch]
  local envelopes = redis.call('HMGET', key, unpack(members))
  for k, id in ipairs(members) do
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
  end
  -- The batch's hash goes with its last envelope.
  redis.call('HDEL', key, unpack(members))
end
local events = {}
for k, id in ipairs(ids) do
  events[k] = prefix .. 'events:' .. id
end
-- Every per-job hash of docs/wire-format.md, "Keys".
for _, field in ipairs({'jobs', 'queued_at', 'error_class', 'last_error',
    'cancel_requested', 'result'}) do
  redis.call('HDEL', prefix .. field, unpack(ids))
end
redis.call('DEL', unpack(events))
redis.call('HINCRBY', prefix .. 'stats', 'purged', #ids)
return #ids
