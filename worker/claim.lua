-- Claim up to `want` waiting jobs, round-robin over tenants, in Redis's clock, and start each one's
-- run (worker/claim.py, worker/runner.py).
--
-- KEYS[1]  queue (P:queue)
-- KEYS[2]  the fair-share index's jobs hash (P:fair:jobs)
-- KEYS[3]  tenants with waiting jobs (P:fair:tenants)
-- KEYS[4]  the turn counter (P:fair:turn)
-- KEYS[5]  the sweep's lock (P:fair:sweep)
-- KEYS[6]  the sweep's cursor (P:fair:sweep-at)
-- ARGV[1]  want: how many jobs to claim
-- ARGV[2]  lease_ms: lifetime of a claim (arq:in-progress:{id}); the worker renews it
-- ARGV[3]  default_cap: jobs of one tenant running at once (0: no cap)
-- ARGV[4]  caps: JSON object, tenant -> cap
-- ARGV[5]  newest: how many of the newest queue entries to look at for unseen jobs, when one of the
--          4 newest is unseen (otherwise nothing arrived since the last look: an empty claim is O(1))
-- ARGV[6]  sweep_batch: queue entries the sweep looks at per run
-- ARGV[7]  sweep_period_ms: at most one sweep per period, across all workers
-- ARGV[8]  max_tenants: tenants looked at per call
-- ARGV[9]  skew_ms: how far ahead of Redis's clock a caller's enqueue time may be trusted
-- ARGV[10] max_envelope: envelopes longer than this (bytes) are never read here
-- ARGV[11] prefix of a job's envelope key (arq:job:)
-- ARGV[12] prefix of a job's claim key (arq:in-progress:)
-- ARGV[13] prefix of a job's due key (P:due:)
-- ARGV[14] prefix of a tenant's waiting jobs (P:fair:q:)
-- ARGV[15] prefix of a capped tenant's running jobs (P:fair:running:)
-- ARGV[16] prefix of a job's try counter (arq:retry:)
-- ARGV[17] prefix of a request's reply key (P:reply:)
-- ARGV[18] prefix of a request's cancel key (P:cancel:)
-- ARGV[19] the try counter's TTL (s)
-- ARGV[20] max_tries: after this many tries a job's envelope is not read
-- Returns {now, then 7 fields per job claimed: id, due, attempt, envelope size, reply or false,
-- envelope or false, cancelled (1 or 0)}: Redis's time (ms), and for each job when it was due and
-- the start of its run (start_of).
-- fair_add(index, id, score, tenant) is prepended from llm_pool/fairness.py.
--
-- Which job and tenant keys it touches depends on what it reads (the queue's entries, each job's
-- tenant), so those cannot be listed in KEYS before the call: they are named here, in one place
-- (job_key, claim_key, due_key, retry_key, reply_key, cancel_key, tenant_queue, tenant_running),
-- from the prefixes in ARGV.

local queue, jobs, tenants, turn, sweep, sweep_at = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local want = tonumber(ARGV[1])
local lease_ms = ARGV[2]
local default_cap = tonumber(ARGV[3])
local caps = cjson.decode(ARGV[4])
local newest = tonumber(ARGV[5])
local sweep_batch = tonumber(ARGV[6])
local sweep_period_ms = ARGV[7]
local max_tenants = tonumber(ARGV[8])
local skew_ms = tonumber(ARGV[9])
local max_envelope = tonumber(ARGV[10])
local job_prefix, claim_prefix, due_prefix = ARGV[11], ARGV[12], ARGV[13]
local tenant_queue_prefix, tenant_running_prefix = ARGV[14], ARGV[15]
local retry_prefix, reply_prefix, cancel_prefix = ARGV[16], ARGV[17], ARGV[18]
local retry_ttl, max_tries = ARGV[19], tonumber(ARGV[20])

local function job_key(id) return job_prefix .. id end
local function claim_key(id) return claim_prefix .. id end
local function due_key(id) return due_prefix .. id end
local function retry_key(id) return retry_prefix .. id end
local function reply_key(id) return reply_prefix .. id end
local function cancel_key(id) return cancel_prefix .. id end
local function tenant_queue(tenant) return tenant_queue_prefix .. tenant end
local function tenant_running(tenant) return tenant_running_prefix .. tenant end
local function index_of(tenant)
  return {jobs = jobs, queue = tenant_queue(tenant), tenants = tenants, turn = turn}
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local MAX_DEFER_MS = 366 * 86400000

local function in_progress(id)
  return redis.call('EXISTS', claim_key(id)) == 1
end

-- The tenant (canonical UUID, '' if unreadable) and enqueue time (nil if unreadable) of a job.
local function envelope_of(id)
  local key = job_key(id)
  local size = redis.call('STRLEN', key)
  if size == 0 or size > max_envelope then return '', nil end
  local ok, job = pcall(cjson.decode, redis.call('GET', key))
  if not ok or type(job) ~= 'table' then return '', nil end
  local et = job.et
  if type(et) ~= 'number' or et ~= et or et < 0 or et > 1e15 then et = nil end
  if type(job.a) ~= 'table' or type(job.a[1]) ~= 'table' then return '', et end
  local tenant = job.a[1].tenant_id
  if type(tenant) ~= 'string' or #tenant > 64 then return '', et end
  local hex = string.gsub(string.lower(tenant), '[{}%-]', '')
  if not string.match(hex, '^%x+$') or #hex ~= 32 then return '', et end
  return string.sub(hex, 1, 8) .. '-' .. string.sub(hex, 9, 12) .. '-' .. string.sub(hex, 13, 16)
    .. '-' .. string.sub(hex, 17, 20) .. '-' .. string.sub(hex, 21, 32), et
end

-- When a job first seen now is due. A caller's `et` close to Redis's clock is trusted: the job is
-- due at its score (later than `et` when deferred on purpose). Otherwise the caller's clock is off
-- (or `et` is unreadable): the job is due now, plus any deferral measured in the caller's clock.
local function due_of(score, et)
  score = tonumber(score)
  if et ~= nil and math.abs(et - now) <= skew_ms then
    return math.floor(math.max(score, et))
  end
  local defer = score - (et or now)
  if defer ~= defer or defer < 0 or defer > MAX_DEFER_MS then defer = 0 end
  return math.floor(now + defer)
end

-- A tenant's jobs are indexed in queue order (first in, first out); when each is due is kept apart.
local function index_if_new(id, score)
  if redis.call('HEXISTS', jobs, id) == 1 or in_progress(id) then return end
  local tenant, et = envelope_of(id)
  if redis.call('EXISTS', due_key(id)) == 0 then
    local due = due_of(score, et)
    redis.call('SET', due_key(id), string.format('%.0f', due), 'PX',
      string.format('%.0f', math.max(due - now, 0) + 86400000))
  end
  fair_add(index_of(tenant), id, score, tenant)
end

-- 1. the newest entries, indexed oldest first so that tenants take turns in order of arrival. When
-- the 4 newest are all indexed or claimed, nothing arrived since the last look (jobs that arrive
-- out of order, behind those, are the sweep's).
local head = redis.call('ZREVRANGE', queue, 0, 3)
if #head == 0 then return {now} end
local unseen = false
for _, id in ipairs(head) do
  if redis.call('HEXISTS', jobs, id) == 0 and not in_progress(id) then unseen = true break end
end
if unseen then
  local newest_entries = redis.call('ZREVRANGE', queue, 0, newest - 1, 'WITHSCORES')
  for i = #newest_entries - 1, 1, -2 do
    index_if_new(newest_entries[i], newest_entries[i + 1])
  end
end

-- 2. the sweep: entries neither indexed nor claimed (back from a dead worker, or missed above)
if redis.call('SET', sweep, '1', 'NX', 'PX', sweep_period_ms) then
  local at = tonumber(redis.call('GET', sweep_at) or '0')
  local entries = redis.call('ZRANGE', queue, at, at + sweep_batch - 1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    index_if_new(entries[i], entries[i + 1])
  end
  if #entries < sweep_batch * 2 then at = 0 else at = at + sweep_batch end
  redis.call('SET', sweep_at, at)
end

local function room_of(tenant)
  local cap = caps[tenant] or default_cap
  if cap <= 0 then return math.huge end
  local key = tenant_running(tenant)
  local running = 0
  for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if in_progress(id) then running = running + 1 else redis.call('ZREM', key, id) end
  end
  return cap - running
end

-- The tenant's first job that is due, dropping index entries that are stale (the job left the
-- queue, or someone else claimed it); nil when it has none due.
local function next_ready(tenant)
  local key = tenant_queue(tenant)
  while true do
    local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #head == 0 then
      redis.call('DEL', key)
      redis.call('ZREM', tenants, tenant)
      return nil
    end
    local id = head[1]
    if redis.call('ZSCORE', queue, id) and not in_progress(id) then
      local due = tonumber(redis.call('GET', due_key(id))) or now
      if due > now then return nil end
      return id, due
    end
    redis.call('ZREM', key, id)
    redis.call('HDEL', jobs, id)
  end
end

-- The start of a claimed job's run, in the same round trip (worker/runner.py): count the try, then
-- read whether the request has its reply already (an earlier run answered and stopped before the
-- end), whether its caller cancelled it and, when it may be read, its envelope.
local function start_of(id)
  local retry = retry_key(id)
  local attempt = redis.call('INCR', retry)
  redis.call('EXPIRE', retry, retry_ttl)
  local size = redis.call('STRLEN', job_key(id))
  local reply = redis.call('GET', reply_key(id))
  local envelope = false
  if not reply and attempt <= max_tries and size > 0 and size <= max_envelope then
    envelope = redis.call('GET', job_key(id))
  end
  return {attempt, size, reply, envelope, redis.call('EXISTS', cancel_key(id))}
end

-- 3. claims, round-robin over tenants, each claimed job started at once
local order = redis.call('ZRANGE', tenants, 0, max_tenants - 1)
local room = {}
local claimed = {now}
local count = 0
local progress = true
while progress and count < want do
  progress = false
  for _, tenant in ipairs(order) do
    if count >= want then break end
    if room[tenant] == nil then room[tenant] = room_of(tenant) end
    if room[tenant] > 0 then
      local id, due = next_ready(tenant)
      if id then
        redis.call('SET', claim_key(id), '1', 'PX', lease_ms)
        redis.call('ZREM', tenant_queue(tenant), id)
        redis.call('HDEL', jobs, id)
        if room[tenant] ~= math.huge then
          redis.call('ZADD', tenant_running(tenant), now, id)
        end
        if redis.call('EXISTS', tenant_queue(tenant)) == 1 then
          redis.call('ZADD', tenants, redis.call('INCR', turn), tenant)
        else
          redis.call('ZREM', tenants, tenant)
        end
        room[tenant] = room[tenant] - 1
        count = count + 1
        claimed[#claimed + 1] = id
        claimed[#claimed + 1] = due
        for _, field in ipairs(start_of(id)) do
          claimed[#claimed + 1] = field
        end
        progress = true
      else
        room[tenant] = 0
      end
    end
  end
end
return claimed
