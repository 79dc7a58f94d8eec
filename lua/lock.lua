-- atr-dist wire format v7: distribution locks (docs/wire-format.md, "Distribution locks").
-- KEYS[1] = the lock: atr-dist:lock:{<distribution>}, outside every queue, so that one
--           distribution has one lock whichever queue its jobs come from (Redis Cluster
--           routes it by its own hash tag; this script touches no other key)
-- ARGV = op (acquire | renew | release | check), owner, ttl_ms
-- The owner is one attempt of one job, `<job_id> <lease token>`: a later attempt of the same
-- job is another owner, and is refused while an earlier one holds the lock.
-- acquire: takes the lock for owner (or extends it if owner holds it already: an acquire
--          repeated because its reply was lost).
-- renew:   extends it if owner holds it.   release: deletes it if owner holds it.
-- check:   only says whether owner holds it; extends nothing (ttl_ms is not read).
-- Returns {1, owner} on success, {0, holder} when another holds it ({0, ''} when nobody does,
-- except for acquire, which then succeeds).
local key = KEYS[1]
local op = ARGV[1]
local owner = ARGV[2]
local ttl = tonumber(ARGV[3])
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
