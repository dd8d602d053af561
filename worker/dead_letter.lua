-- Move a queue entry that cannot be a request id aside (worker/claim.py).
--
-- KEYS[1]  queue (P:queue)
-- KEYS[2]  dead-letter sorted set (P:dead-letter)
-- KEYS[3]  the entry's arq:job key
-- KEYS[4]  the entry's arq:in-progress key (its claim)
-- KEYS[5]  the entry's arq:retry key
-- KEYS[6]  the entry's P:due key
-- ARGV[1]  the entry, as its raw bytes
-- ARGV[2]  how many dead-letter entries to keep (the oldest go first)
-- The entry's other keys go too: its envelope may hold a prompt, and its claim is void.

local queue, dead_letter = KEYS[1], KEYS[2]
local job, claim, retry, due = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local entry = ARGV[1]
local keep = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

redis.call('ZREM', queue, entry)
redis.call('DEL', job, claim, retry, due)
redis.call('ZADD', dead_letter, now, entry)
redis.call('ZREMRANGEBYRANK', dead_letter, 0, -keep - 1)
return 1
