-- Enqueue one job in arq's format, stamped with Redis's clock (llm_pool/enqueue.py).
--
-- KEYS[1]  arq:job:{id}
-- KEYS[2]  arq:result:{id}
-- KEYS[3]  the queue (P:queue)
-- KEYS[4]  the reply key (P:reply:{id})
-- KEYS[5]  the due key (P:due:{id})
-- KEYS[6]  the wake-up list (P:wakeups)
-- ARGV[1]  the JSON envelope
-- ARGV[2]  the job id
-- ARGV[3]  expiry of the job key (ms)
-- ARGV[4]  the tenant the job is indexed under
-- ARGV[5]  the fair-share index prefix (P:fair:)
-- ARGV[6]  wake-up tokens kept at most
-- Returns the reply if there is one already, 0 if the job exists (arq's dedupe), 1 if enqueued.
-- fair_add(prefix, id, score, tenant) is prepended from fair_add.lua.

local envelope, id, expires_ms = ARGV[1], ARGV[2], ARGV[3]
local tenant, fair, tokens_kept = ARGV[4], ARGV[5], tonumber(ARGV[6])

local reply = redis.call('GET', KEYS[4])
if reply then return reply end
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('PSETEX', KEYS[1], expires_ms, envelope)
redis.call('ZADD', KEYS[3], now, id)
redis.call('SET', KEYS[5], now, 'PX', expires_ms)
fair_add(fair, id, now, tenant)
redis.call('RPUSH', KEYS[6], '1')
redis.call('LTRIM', KEYS[6], -tokens_kept, -1)
return 1
