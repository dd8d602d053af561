-- The start of one run of a claimed job (worker/runner.py): count the try, then read, in the same
-- round trip, whether the request already has its reply and, when it may be read, its envelope.
--
-- KEYS[1]  the job's try counter (arq:retry:{id})
-- KEYS[2]  the job's envelope (arq:job:{id})
-- KEYS[3]  the request's reply key (P:reply:{id})
-- ARGV[1]  the try counter's TTL (s)
-- ARGV[2]  max_envelope: envelopes longer than this (bytes) are not read
-- ARGV[3]  max_tries: after this many tries the envelope is not read
-- Returns {attempt, envelope size, reply or false, envelope or false}.

local retry, job, reply = KEYS[1], KEYS[2], KEYS[3]
local retry_ttl, max_envelope, max_tries = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local attempt = redis.call('INCR', retry)
redis.call('EXPIRE', retry, retry_ttl)
local size = redis.call('STRLEN', job)
local existing = redis.call('GET', reply)
local envelope = false
if not existing and attempt <= max_tries and size > 0 and size <= max_envelope then
  envelope = redis.call('GET', job)
end
return {attempt, size, existing, envelope}
