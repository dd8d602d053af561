-- Count a request against its tenant's limits, or refuse it (worker/limits.py).
--
-- KEYS[1]  the tenant's requests-per-minute counter for this minute (P:limits:{tenant}:rpm:{minute})
-- KEYS[2]  the tenant's tokens-per-minute counter for this minute (P:limits:{tenant}:tpm:{minute})
-- KEYS[3]  the tenant's ledger hash for today (P:usage:{tenant}:{day})
-- ARGV[1]  rpm limit (0: none)
-- ARGV[2]  tpm limit (0: none)
-- ARGV[3]  daily budget in USD (0: none)
-- Returns {} when admitted (and counted), else {limit name, current value}.

local requests_key, tokens_key, ledger = KEYS[1], KEYS[2], KEYS[3]
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if budget > 0 then
  local spent = tonumber(redis.call('HGET', ledger, 'cost_usd') or '0')
  if spent >= budget then return {'daily_budget_usd', tostring(spent)} end
end
if tpm > 0 then
  local used = tonumber(redis.call('GET', tokens_key) or '0')
  if used >= tpm then return {'tpm', tostring(used)} end
end
if rpm > 0 then
  local n = redis.call('INCR', requests_key)
  if n == 1 then redis.call('EXPIRE', requests_key, 120) end
  if n > rpm then
    redis.call('DECR', requests_key)
    return {'rpm', tostring(n - 1)}
  end
end
return {}
