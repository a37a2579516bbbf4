-- settle.lua: settle one request exactly once: confirm or release its reservation, count the usage,
-- append the usage row and fire the 80% / 100% quota warnings once per period.
--
-- KEYS[1] {s:NN}:a:<acct>:q:<period>    monthly counters of the period the request was admitted in
-- KEYS[2] {s:NN}:a:<acct>:res           zset of in-flight request ids
-- KEYS[3] {s:NN}:a:<acct>:resd          hash request id -> "<plan>|<limit>|<key>|<model>|..."
-- KEYS[4] {s:NN}:a:<acct>:done:<rid>    idempotency marker
-- KEYS[5] {s:NN}:usage                  usage stream of the shard
-- KEYS[6] {s:NN}:notify                 notification stream of the shard
-- ARGV[1] rid       ARGV[2] billable (1 = the call counts)   ARGV[3] outcome   ARGV[4] HTTP status
-- ARGV[5] prompt tokens   ARGV[6] completion tokens   ARGV[7] cached tokens   ARGV[8] reasoning tokens
-- ARGV[9] cost_nanos      ARGV[10] latency_ms          ARGV[11] now ms         ARGV[12] marker TTL s
-- ARGV[13] acct  ARGV[14] key id  ARGV[15] plan  ARGV[16] model  ARGV[17] upstream  ARGV[18] period
-- ARGV[19] ts_start_ms    ARGV[20] limit known at admission (-1 unlimited or unknown)
-- ARGV[21] quota hash EXPIREAT, s
-- ARGV[22] calls admitted (what admit reserved: n x prompts); all are confirmed or all released
--          (absent in settles spooled before requests could ask for several calls: 1)
--
-- Returns {1, used, overage calls} when settled now, {0} when this request id was settled before.
-- overage calls: how many of this request's calls lie past the limit (0 .. calls).

if redis.call('EXISTS', KEYS[4]) == 1 then
  return {0}
end
local admitted = tonumber(ARGV[22]) or 1
local record = redis.call('HGET', KEYS[3], ARGV[1])
local limit = tonumber(ARGV[20])
local plan = ARGV[15]
if record then
  local record_plan, record_limit = string.match(record, '^([^|]*)|([^|]*)|')
  plan, limit = record_plan, tonumber(record_limit)
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'reserved', -admitted)
end

local billable = ARGV[2] == '1'
local calls, overage, used = 0, 0, 0
local pt, ct, cached, reasoning, cost = 0, 0, 0, 0, 0
if billable then
  calls, pt, ct, cached, reasoning, cost = admitted, ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
  used = redis.call('HINCRBY', KEYS[1], 'used', calls)
  if limit >= 0 and used > limit then
    overage = used - math.max(limit, used - calls)
    redis.call('HINCRBY', KEYS[1], 'overage', overage)
  end
  local m = 'm:' .. ARGV[16] .. ':'
  redis.call('HINCRBY', KEYS[1], 'pt', pt)
  redis.call('HINCRBY', KEYS[1], 'ct', ct)
  redis.call('HINCRBY', KEYS[1], 'cached', cached)
  redis.call('HINCRBY', KEYS[1], 'reasoning', reasoning)
  redis.call('HINCRBY', KEYS[1], 'cost_nanos', cost)
  redis.call('HINCRBY', KEYS[1], m .. 'calls', calls)
  redis.call('HINCRBY', KEYS[1], m .. 'pt', pt)
  redis.call('HINCRBY', KEYS[1], m .. 'ct', ct)
  redis.call('EXPIREAT', KEYS[1], ARGV[21])
end

redis.call('XADD', KEYS[5], '*', 'rid', ARGV[1], 'acct', ARGV[13], 'key', ARGV[14], 'plan', plan,
  'model', ARGV[16], 'upstream', ARGV[17], 'period', ARGV[18], 'ts_start_ms', ARGV[19],
  'ts_end_ms', ARGV[11], 'status', ARGV[4], 'outcome', ARGV[3], 'calls', calls, 'overage', overage,
  'pt', pt, 'ct', ct, 'cached', cached, 'reasoning', reasoning, 'cost_nanos', cost, 'latency_ms', ARGV[10])

if billable and limit > 0 then
  for _, level in ipairs({80, 100}) do
    if used * 100 >= limit * level and redis.call('HSETNX', KEYS[1], 'warn' .. level, 1) == 1 then
      redis.call('XADD', KEYS[6], '*', 'acct', ARGV[13], 'period', ARGV[18], 'level', level,
        'used', used, 'limit', limit, 'ts_ms', ARGV[11])
    end
  end
end

redis.call('SET', KEYS[4], '1', 'EX', ARGV[12])
return {1, used, overage}
