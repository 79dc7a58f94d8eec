-- atr-dist wire format v7: heartbeat (docs/wire-format.md, "heartbeat").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, worker_id, lease_ms, then pairs: id, lease (the token fetch.lua handed out)
-- Extends the lease of every listed job the worker still holds under that token (its
-- record is `running <lease>`).
-- Returns two arrays: ids the worker no longer holds (stop working on them), and ids an
-- operator asked to cancel.
local prefix = ARGV[1]
local worker = ARGV[2]
local lease_ms = tonumber(ARGV[3])
if (#ARGV - 3) % 2 ~= 0 then
  return redis.error_reply('ERR atr-dist heartbeat: jobs must come as id, lease pairs')
end
-- A lease that is not a finite number of ms would score a job's lease +inf (never
-- expiring) or fail the call half-way. (inf - inf and nan - nan are nan.)
if worker == nil or not string.match(worker, '^%S+$') or lease_ms == nil
  or lease_ms - lease_ms ~= 0 or lease_ms < 0 then
  return redis.error_reply('ERR atr-dist heartbeat: expected worker_id (no spaces) and lease_ms >= 0')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost, cancel = {}, {}
local ids = {}
for i = 4, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
end
if #ids > 0 then
  local records = redis.call('HMGET', prefix .. 'jobs', unpack(ids))
  local requested = redis.call('HMGET', prefix .. 'cancel_requested', unpack(ids))
  local renew = {}
  for k, id in ipairs(ids) do
    if records[k] == 'running ' .. ARGV[3 + 2 * k] then
      renew[#renew + 1] = now + lease_ms
      renew[#renew + 1] = id
      if requested[k] then
        cancel[#cancel + 1] = id
      end
    else
      lost[#lost + 1] = id
    end
  end
  if #renew > 0 then
    redis.call('ZADD', prefix .. 'running', 'XX', unpack(renew))
  end
end
-- Live workers, scored by when their heartbeat runs out; the dead ones age out here.
redis.call('ZADD', prefix .. 'workers', now + lease_ms, worker)
redis.call('ZREMRANGEBYSCORE', prefix .. 'workers', '-inf', now)
return {lost, cancel}
