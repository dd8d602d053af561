-- fair_add(prefix, id, score, tenant): index one waiting job in the fair-share index
-- (llm_pool/fairness.py). A function prepended to the scripts that index jobs (enqueue.lua,
-- worker/claim.lua), not a script of its own.
local function fair_add(prefix, id, score, tenant)
  redis.call('HSET', prefix .. 'jobs', id, tenant)
  redis.call('ZADD', prefix .. 'q:' .. tenant, score, id)
  if not redis.call('ZSCORE', prefix .. 'tenants', tenant) then
    redis.call('ZADD', prefix .. 'tenants', redis.call('INCR', prefix .. 'turn'), tenant)
  end
end
