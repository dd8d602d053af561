-- The last write of a request (worker/outbox.py): reply key once, ledger once, then the final event.
--
-- KEYS[1]  reply key (P:reply:{id})
-- KEYS[2]  the tenant's ledger hash for the day (P:usage:{tenant}:{day}), or KEYS[1] when unused
-- KEYS[3]  the tenant's tokens-per-minute counter, or KEYS[1] when unused
-- ARGV[1]  reply JSON
-- ARGV[2]  reply TTL (s)
-- ARGV[3]  channel
-- ARGV[4]  final event JSON
-- ARGV[5]  ledger TTL (s)
-- ARGV[6]  prompt tokens
-- ARGV[7]  completion tokens
-- ARGV[8]  cost (USD)
-- ARGV[9]  '1': count the request in the ledger
-- ARGV[10] '1': count its tokens in the tokens-per-minute counter
-- Returns 0 if the reply existed already (nothing else is done), 1 when written and published,
-- 2 when written but the final event was refused (an ACL on the channel): the reply stands.

local reply, ledger, tokens_per_minute = KEYS[1], KEYS[2], KEYS[3]
local reply_json, reply_ttl = ARGV[1], tonumber(ARGV[2])
local channel, event_json = ARGV[3], ARGV[4]
local ledger_ttl = tonumber(ARGV[5])
local prompt_tokens, completion_tokens, cost = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local count_ledger, count_tpm = ARGV[9] == '1', ARGV[10] == '1'

if not redis.call('SET', reply, reply_json, 'NX', 'EX', reply_ttl) then
  return 0
end
if count_ledger then
  redis.call('HINCRBY', ledger, 'requests', 1)
  redis.call('HINCRBY', ledger, 'prompt_tokens', prompt_tokens)
  redis.call('HINCRBY', ledger, 'completion_tokens', completion_tokens)
  redis.call('HINCRBYFLOAT', ledger, 'cost_usd', cost)
  redis.call('EXPIRE', ledger, ledger_ttl)
end
if count_tpm then
  redis.call('INCRBY', tokens_per_minute, prompt_tokens + completion_tokens)
  redis.call('EXPIRE', tokens_per_minute, 120)
end
local published = redis.pcall('PUBLISH', channel, event_json)
if type(published) == 'table' and published.err then return 2 end
return 1
