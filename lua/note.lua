-- atr-dist wire format v7: a note from a running attempt in its job's timeline
-- (docs/wire-format.md, "note").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, id, attempt, event, message, http_status, retry_after_ms, wait_ms
--   (the last three may be empty)
-- Appends the event to events:<id> only while the job's record says it is running that
-- attempt: a note from an attempt that lost its lease, or about a job purged meanwhile,
-- is dropped, so no events key outlives its job.
-- Returns 1 when the note was written, 0 when it was dropped.
local prefix = ARGV[1]
local id = ARGV[2]
local attempt = tonumber(ARGV[3])
local NOTES = {http_retry = true, write_read_back = true}
if attempt == nil or not NOTES[ARGV[4]] then
  return redis.error_reply('ERR atr-dist note: expected id, attempt, http_retry | write_read_back, message, status, retry_after_ms, wait_ms')
end
local record = redis.call('HGET', prefix .. 'jobs', id)
if not record then
  return 0
end
local running_attempt = string.match(record, '^running %d+ %d+ %d+ (%d+) ')
if tonumber(running_attempt) ~= attempt then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = prefix .. 'events:' .. id
redis.call('RPUSH', key, cjson.encode({
  at = now,
  event = ARGV[4],
  attempt = attempt,
  message = ARGV[5],
  http_status = tonumber(ARGV[6]),
  retry_after_ms = tonumber(ARGV[7]),
  wait_ms = tonumber(ARGV[8]),
}))
redis.call('LTRIM', key, -50, -1)
return 1
