-- atr-dist wire format v2: distribution locks (docs/wire-format.md, "Distribution locks").
-- KEYS[1] = <prefix>queued
-- ARGV = prefix, op (acquire | renew | release), name, owner, ttl_ms
-- acquire: takes lock:<name> for owner (or extends it if owner holds it already).
-- renew:   extends it if owner holds it.   release: deletes it if owner holds it.
-- Returns {1, owner} on success, {0, holder} when someone else holds it.
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
end
return redis.error_reply('ERR atr-dist lock: unknown op ' .. tostring(op))
