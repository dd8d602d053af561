-- Enqueue one job in arq's format, stamped with Redis's clock (llm_pool/enqueue.py).
--
-- KEYS[1]   arq:job:{id}
-- KEYS[2]   arq:result:{id}
-- KEYS[3]   the queue (P:queue)
-- KEYS[4]   the reply key (P:reply:{id})
-- KEYS[5]   the due key (P:due:{id})
-- KEYS[6]   the wake-up list (P:wakeups)
-- KEYS[7]   the fair-share index's jobs hash (P:fair:jobs)
-- KEYS[8]   the tenant's waiting jobs (P:fair:q:{tenant})
-- KEYS[9]   the tenants with waiting jobs (P:fair:tenants)
-- KEYS[10]  the turn counter (P:fair:turn)
-- ARGV[1]   the JSON envelope
-- ARGV[2]   the job id
-- ARGV[3]   expiry of the job key (ms)
-- ARGV[4]   the tenant the job is indexed under
-- ARGV[5]   wake-up tokens kept at most
-- Returns the reply if there is one already, 0 if the job exists (arq's dedupe), 1 if enqueued.
-- fair_add(index, id, score, tenant) is prepended from fair_add.lua.

local job, result, queue, reply, due, wakeups = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local index = {jobs = KEYS[7], queue = KEYS[8], tenants = KEYS[9], turn = KEYS[10]}
local envelope, id, expires_ms = ARGV[1], ARGV[2], ARGV[3]
local tenant, tokens_kept = ARGV[4], tonumber(ARGV[5])

local existing = redis.call('GET', reply)
if existing then return existing end
if redis.call('EXISTS', job, result) > 0 then return 0 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('PSETEX', job, expires_ms, envelope)
-- ZINCRBY adds the same entry as ZADD, but its keyspace event is `zincr`, which the wake-up relay
-- (worker/wakeups.py) ignores: this script pushes the job's one wake-up token itself.
if redis.call('ZSCORE', queue, id) then
  redis.call('ZADD', queue, now, id)
else
  redis.call('ZINCRBY', queue, now, id)
end
redis.call('SET', due, now, 'PX', expires_ms)
fair_add(index, id, now, tenant)
redis.call('RPUSH', wakeups, '1')
redis.call('LTRIM', wakeups, -tokens_kept, -1)
return 1
