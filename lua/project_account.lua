-- project_account.lua: write one account's state, as the database has it, into the hot path's keys, unless Redis
-- already holds a newer version of it (two writers projecting out of order leave the newer state).
--
-- KEYS[1] {s:NN}:a:<acct>:acct      account hash (plan, status, custom_quota, overage, ..., version)
-- KEYS[2] {s:NN}:a:<acct>:keys      set of the account's key ids
-- KEYS[3] {s:NN}:a:<acct>:boosts    zset "<boost_id>:<calls>" scored by expiry ms
-- KEYS[4..] {s:NN}:a:<acct>:key:<kid>   one per API key record in ARGV, same order
-- ARGV[1] version (accounts.version in the database); "<version>!" writes whatever Redis holds (resync, when
--         Redis holds a version the database never had: it came from another database or a restored backup)
-- ARGV[2] n: the number of account field/value pairs that follow (ARGV[3] .. ARGV[2 + 2n])
-- then, per key in KEYS[4..]: key id, sha256, status ("active", "revoked", or "" = delete the hash), name,
--      created_ms (5 values each)
-- then m: the number of boosts, and m pairs: member "<boost_id>:<calls>", expiry ms
--
-- Returns 1 when written, 0 when Redis holds a newer version (nothing changed).
-- The monthly counters, buckets and reservations are not touched.

local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local force = string.sub(ARGV[1], -1) == '!'
local version = tonumber(force and string.sub(ARGV[1], 1, -2) or ARGV[1])
if stored > version and not force then
  return 0
end

local n = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
local fields = {'version', tostring(version)}
for i = 3, 2 + 2 * n do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))

local at = 3 + 2 * n
redis.call('DEL', KEYS[2])
for k = 4, #KEYS do
  local kid, sha, status, name, created = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  at = at + 5
  if status == '' then
    redis.call('DEL', KEYS[k])
  else
    redis.call('HSET', KEYS[k], 'sha256', sha, 'status', status, 'name', name, 'created_ms', created)
    redis.call('SADD', KEYS[2], kid)
  end
end

redis.call('DEL', KEYS[3])
local m = tonumber(ARGV[at])
for b = 1, m do
  redis.call('ZADD', KEYS[3], ARGV[at + 2 * b], ARGV[at + 2 * b - 1])
end
return 1
