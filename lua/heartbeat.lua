-- atr-dist wire format v2: heartbeat (docs/wire-format.md, "heartbeat").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, worker_id, lease_ms, id...
-- Extends the lease of every listed job the worker still holds.
-- Returns two arrays: ids the worker no longer holds (stop working on them), and ids an
-- operator asked to cancel.
local prefix = ARGV[1]
local worker = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local running = prefix .. 'running'
local lost, cancel = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', prefix .. 'job:' .. id, 'state', 'worker', 'cancel_requested')
  if f[1] == 'running' and f[2] == worker then
    redis.call('ZADD', running, 'XX', now + lease_ms, id)
    if f[3] == '1' then
      cancel[#cancel + 1] = id
    end
  else
    lost[#lost + 1] = id
  end
end
-- Live workers, scored by when their heartbeat runs out; the dead ones age out here.
redis.call('ZADD', prefix .. 'workers', now + lease_ms, worker)
redis.call('ZREMRANGEBYSCORE', prefix .. 'workers', '-inf', now)
return {lost, cancel}
