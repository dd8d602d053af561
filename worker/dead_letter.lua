-- Move a queue entry that cannot be a request id aside (worker/claim.py).
--
-- KEYS[1]  queue (P:queue)
-- KEYS[2]  dead-letter sorted set (P:dead-letter)
-- ARGV[1]  the entry, as its raw bytes
-- ARGV[2]  how many dead-letter entries to keep (the oldest go first)
-- The entry's arq keys go too: its envelope may hold a prompt, and its claim is void.

local entry = ARGV[1]
local keep = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

redis.call('ZREM', KEYS[1], entry)
redis.call('DEL', 'arq:job:' .. entry, 'arq:in-progress:' .. entry, 'arq:retry:' .. entry)
redis.call('ZADD', KEYS[2], now, entry)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -keep - 1)
return 1
