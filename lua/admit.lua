-- admit.lua: authenticate the key and admit one request, or refuse it and change nothing.
--
-- KEYS[1] {s:NN}:a:<acct>:acct          account hash (plan, status, custom_quota, overage)
-- KEYS[2] {s:NN}:a:<acct>:key:<kid>     API key hash (sha256, status)
-- KEYS[3] {s:NN}:a:<acct>:q:<period>    monthly counters (used, reserved, ...)
-- KEYS[4] {s:NN}:a:<acct>:tb            token buckets (a:tokens, a:ts, k:<kid>:tokens, k:<kid>:ts)
-- KEYS[5] {s:NN}:a:<acct>:boosts        zset "<boost_id>:<calls>" scored by expiry ms
-- KEYS[6] {s:NN}:a:<acct>:res           zset of in-flight request ids scored by expiry ms
-- KEYS[7] {s:NN}:a:<acct>:resd          hash request id -> "<plan>|<limit>|<key>|<model>|<upstream>|<period>|<ts_start_ms>"
-- ARGV[1] sha256 of the presented API key     ARGV[2] key id
-- ARGV[3] model tier ("" = no model check)    ARGV[4] request id
-- ARGV[5] now, ms since epoch
-- ARGV[6] plans "|<name>=<included>,<unlimited 0/1>,<rpm>,<burst>,<overage>,<custom 0/1>,<max calls per request>,
--          <max output tokens, 0 = no cap>,<tier> <tier>|..."
-- ARGV[7] reservation expiry, ms               ARGV[8] quota hash EXPIREAT, s
-- ARGV[9] "1" = reserve quota (billable call), "0" = authenticate only
-- ARGV[10] reservation details "<key id>|<model>|<upstream>|<period>|<ts_start_ms>"
--          (stored as "<plan>|<limit>|" .. ARGV[10] .. "|<calls>" so that the reaper can settle an abandoned
--          request)
-- ARGV[11] calls asked for by this request (n x prompts; 1 for most endpoints)
-- ARGV[12] largest output-token limit the request asks for (max_tokens and kin; 0 = none given)
--
-- Returns {code, ...}:
--   {0, plan, limit, remaining, burst, rate_remaining, rate_reset_ms, rpm, used}   admitted (limit -1 = unlimited;
--      used: calls used and reserved before this request, 0 when not counted)
--   {1} bad or revoked key    {2, status} account missing or not active    {3, plan} model not in plan
--   {4, scope, retry_ms, burst, rpm, reset_ms} rate limited    {5, plan, limit, used, calls} quota exhausted
--   {6} duplicate request id  {7, plan} plan unknown to this gateway's catalog
--   {8, plan, max calls} more calls in one request than the plan allows
--   {9, plan, max tokens} an output-token limit above the plan's cap
-- The rate limit is a token bucket of `burst` requests refilled at `rpm` per minute; one request takes one token
-- whatever its calls. The monthly quota counts calls.

local key = redis.call('HMGET', KEYS[2], 'sha256', 'status')
if key[1] ~= ARGV[1] or key[2] ~= 'active' then
  return {1}
end
local acct = redis.call('HMGET', KEYS[1], 'plan', 'status', 'custom_quota', 'overage')
if acct[1] == false then
  return {2, 'missing'}
end
if acct[2] ~= 'active' then
  return {2, acct[2] or 'unknown'}
end
if string.find(acct[1], '[^%w_]') then      -- not a catalog name; also keeps the pattern below literal
  return {7, acct[1]}
end
local spec = string.match(ARGV[6], '|' .. acct[1] .. '=([^|]*)|')
if spec == nil then
  return {7, acct[1]}
end
local included, unlimited, rpm, burst, overage, custom, max_calls, max_tokens, tiers =
  string.match(spec, '^(%d+),(%d),(%d+),(%d+),([%w_]+),(%d),(%d+),(%d+),(.*)$')
if ARGV[3] ~= '' and not string.find(' ' .. tiers .. ' ', ' ' .. ARGV[3] .. ' ', 1, true) then
  return {3, acct[1]}
end
local billable = ARGV[9] == '1'
local calls = tonumber(ARGV[11])
if billable and calls > tonumber(max_calls) then
  return {8, acct[1], tonumber(max_calls)}
end
if tonumber(max_tokens) > 0 and tonumber(ARGV[12]) > tonumber(max_tokens) then
  return {9, acct[1], tonumber(max_tokens)}
end

local now = tonumber(ARGV[5])
rpm = tonumber(rpm)
burst = tonumber(burst)
local per_ms = rpm / 60000.0
local kid = ARGV[2]

-- Both buckets are computed first and written only if the request is admitted.
local tb = redis.call('HMGET', KEYS[4], 'a:tokens', 'a:ts', 'k:' .. kid .. ':tokens', 'k:' .. kid .. ':ts')
local function refill(tokens, ts)
  if tokens == false then return burst end
  local elapsed = now - tonumber(ts)
  if elapsed < 0 then elapsed = 0 end
  return math.min(burst, tonumber(tokens) + elapsed * per_ms)
end
local account_tokens = refill(tb[1], tb[2])
local key_tokens = refill(tb[3], tb[4])
if account_tokens < 1 or key_tokens < 1 then
  local scope, have = 'account', account_tokens
  if key_tokens < account_tokens then scope, have = 'key', key_tokens end
  return {4, scope, math.ceil((1 - have) / per_ms), burst, rpm, math.ceil((burst - have) / per_ms)}
end

local limit = -1
local used = 0
if billable and unlimited ~= '1' then
  limit = tonumber(included)
  if custom == '1' and acct[3] and acct[3] ~= '' then
    limit = tonumber(acct[3])
  end
  local boosts = redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. now, '+inf')
  for _, member in ipairs(boosts) do
    limit = limit + tonumber(string.match(member, ':(%d+)$'))
  end
  local q = redis.call('HMGET', KEYS[3], 'used', 'reserved')
  used = (tonumber(q[1]) or 0) + (tonumber(q[2]) or 0)
  local payg = overage == 'payg_optional' and acct[4] == '1'
  if used + calls > limit and not payg then
    return {5, acct[1], limit, used, calls}
  end
end

if billable then
  if redis.call('HEXISTS', KEYS[7], ARGV[4]) == 1 then
    return {6}
  end
  redis.call('HINCRBY', KEYS[3], 'reserved', calls)
  redis.call('EXPIREAT', KEYS[3], ARGV[8])
  redis.call('ZADD', KEYS[6], ARGV[7], ARGV[4])
  redis.call('HSET', KEYS[7], ARGV[4], acct[1] .. '|' .. limit .. '|' .. ARGV[10] .. '|' .. calls)
  local keep_ms = tonumber(ARGV[7]) - now + 86400000
  redis.call('PEXPIRE', KEYS[6], keep_ms)
  redis.call('PEXPIRE', KEYS[7], keep_ms)
end
account_tokens = account_tokens - 1
key_tokens = key_tokens - 1
redis.call('HSET', KEYS[4], 'a:tokens', tostring(account_tokens), 'a:ts', ARGV[5],
           'k:' .. kid .. ':tokens', tostring(key_tokens), 'k:' .. kid .. ':ts', ARGV[5])
redis.call('PEXPIRE', KEYS[4], math.ceil(burst / per_ms) + 60000)

local remaining = -1
if limit >= 0 then
  remaining = math.max(0, limit - used - calls)
end
local rate_left = math.min(account_tokens, key_tokens)
return {0, acct[1], limit, remaining, burst, math.floor(rate_left), math.ceil((burst - rate_left) / per_ms), rpm,
        used}
