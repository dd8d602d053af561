-- fair_add(index, id, score, tenant): index one waiting job in the fair-share index
-- (llm_pool/fairness.py). A function prepended to the scripts that index jobs (enqueue.lua,
-- worker/claim.lua), not a script of its own. `index` holds the key names:
--   index.jobs     P:fair:jobs (hash, job id -> tenant)
--   index.queue    P:fair:q:{tenant} (that tenant's waiting jobs)
--   index.tenants  P:fair:tenants (tenants with waiting jobs, by turn)
--   index.turn     P:fair:turn (the turn counter)
local function fair_add(index, id, score, tenant)
  redis.call('HSET', index.jobs, id, tenant)
  redis.call('ZADD', index.queue, score, id)
  if not redis.call('ZSCORE', index.tenants, tenant) then
    redis.call('ZADD', index.tenants, redis.call('INCR', index.turn), tenant)
  end
end
