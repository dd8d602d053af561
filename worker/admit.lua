-- Count a request against its tenant's limits, or refuse it (worker/limits.py).
--
-- KEYS[1]  the tenant's requests-per-minute counter for this minute (P:limits:{tenant}:rpm:{minute})
-- KEYS[2]  the tenant's tokens-per-minute counter for this minute (P:limits:{tenant}:tpm:{minute})
-- KEYS[3]  the tenant's ledger hash for today (P:usage:{tenant}:{day})
-- ARGV[1]  rpm limit (0: none)
-- ARGV[2]  tpm limit (0: none)
-- ARGV[3]  daily budget in USD (0: none)
-- Returns {} when admitted (and counted), else {limit name, current value}.

local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if budget > 0 then
  local spent = tonumber(redis.call('HGET', KEYS[3], 'cost_usd') or '0')
  if spent >= budget then return {'daily_budget_usd', tostring(spent)} end
end
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= tpm then return {'tpm', tostring(used)} end
end
if rpm > 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], 120) end
  if n > rpm then
    redis.call('DECR', KEYS[1])
    return {'rpm', tostring(n - 1)}
  end
end
return {}
