-- atr-dist wire format v7: distribution locks (docs/wire-format.md, "Distribution locks").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, op (acquire | renew | release | check), name, owner, ttl_ms
-- The owner is one attempt of one job, `<job_id> <lease token>`: a later attempt of the same
-- job is another owner, and is refused while an earlier one holds the lock.
-- acquire: takes lock:<name> for owner (or extends it if owner holds it already: an acquire
--          repeated because its reply was lost).
-- renew:   extends it if owner holds it.   release: deletes it if owner holds it.
-- check:   only says whether owner holds it; extends nothing (ttl_ms is not read).
-- Returns {1, owner} on success, {0, holder} when another holds it ({0, ''} when nobody does,
-- except for acquire, which then succeeds).
local prefix = ARGV[1]
local op = ARGV[2]
local key = prefix .. 'lock:' .. ARGV[3]
local owner = ARGV[4]
local ttl = tonumber(ARGV[5])
local holder = redis.call('GET', key)
if op == 'acquire' then
  if not holder then
    redis.call('SET', key, owner, 'PX', ttl)
    return {1, owner}
  end
  if holder == owner then
    redis.call('PEXPIRE', key, ttl)
    return {1, owner}
  end
  return {0, holder}
elseif op == 'renew' then
  if holder == owner then
    redis.call('PEXPIRE', key, ttl)
    return {1, owner}
  end
  return {0, holder or ''}
elseif op == 'release' then
  if holder == owner then
    redis.call('DEL', key)
    return {1, owner}
  end
  return {0, holder or ''}
elseif op == 'check' then
  if holder == owner then
    return {1, owner}
  end
  return {0, holder or ''}
end
return redis.error_reply('ERR atr-dist lock: unknown op ' .. tostring(op))
