-- Claim up to `want` waiting jobs, round-robin over tenants, in Redis's clock (worker/claim.py).
--
-- KEYS[1]  queue (P:queue)
-- ARGV[1]  want: how many jobs to claim
-- ARGV[2]  lease_ms: lifetime of a claim (arq:in-progress:{id}); the worker renews it
-- ARGV[3]  default_cap: jobs of one tenant running at once (0: no cap)
-- ARGV[4]  caps: JSON object, tenant -> cap
-- ARGV[5]  newest: how many of the newest queue entries to look at for unseen jobs, when one of the
--          4 newest is unseen (otherwise nothing arrived since the last look: an empty claim is O(1))
-- ARGV[6]  sweep_batch: queue entries the sweep looks at per run
-- ARGV[7]  sweep_period_ms: at most one sweep per period, across all workers
-- ARGV[8]  fair: prefix of the fair-share index (P:fair:)
-- ARGV[9]  max_tenants: tenants looked at per call
-- ARGV[10] skew_ms: how far ahead of Redis's clock a caller's enqueue time may be trusted
-- ARGV[11] max_envelope: envelopes longer than this (bytes) are never read here
-- ARGV[12] due_prefix: P:due: (when each job is due, Redis ms)
-- Returns {now, id, due, id, due, ...}: Redis's time (ms) and the jobs claimed.
-- fair_add(prefix, id, score, tenant) is prepended from llm_pool/fairness.py.

local queue = KEYS[1]
local want = tonumber(ARGV[1])
local lease_ms = ARGV[2]
local default_cap = tonumber(ARGV[3])
local caps = cjson.decode(ARGV[4])
local newest = tonumber(ARGV[5])
local sweep_batch = tonumber(ARGV[6])
local sweep_period_ms = ARGV[7]
local fair = ARGV[8]
local max_tenants = tonumber(ARGV[9])
local skew_ms = tonumber(ARGV[10])
local max_envelope = tonumber(ARGV[11])
local due_prefix = ARGV[12]

local jobs = fair .. 'jobs'
local tenants = fair .. 'tenants'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local MAX_DEFER_MS = 366 * 86400000

local function in_progress(id)
  return redis.call('EXISTS', 'arq:in-progress:' .. id) == 1
end

-- The tenant (canonical UUID, '' if unreadable) and enqueue time (nil if unreadable) of a job.
local function envelope_of(id)
  local key = 'arq:job:' .. id
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
  if redis.call('EXISTS', due_prefix .. id) == 0 then
    local due = due_of(score, et)
    redis.call('SET', due_prefix .. id, string.format('%.0f', due), 'PX',
      string.format('%.0f', math.max(due - now, 0) + 86400000))
  end
  fair_add(fair, id, score, tenant)
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
if redis.call('SET', fair .. 'sweep', '1', 'NX', 'PX', sweep_period_ms) then
  local at = tonumber(redis.call('GET', fair .. 'sweep-at') or '0')
  local entries = redis.call('ZRANGE', queue, at, at + sweep_batch - 1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    index_if_new(entries[i], entries[i + 1])
  end
  if #entries < sweep_batch * 2 then at = 0 else at = at + sweep_batch end
  redis.call('SET', fair .. 'sweep-at', at)
end

-- 3. claims, round-robin over tenants
local function room_of(tenant)
  local cap = caps[tenant] or default_cap
  if cap <= 0 then return math.huge end
  local key = fair .. 'running:' .. tenant
  local running = 0
  for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if in_progress(id) then running = running + 1 else redis.call('ZREM', key, id) end
  end
  return cap - running
end

-- The tenant's first job that is due, dropping index entries that are stale (the job left the
-- queue, or someone else claimed it); nil when it has none due.
local function next_ready(tenant)
  local key = fair .. 'q:' .. tenant
  while true do
    local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #head == 0 then
      redis.call('DEL', key)
      redis.call('ZREM', tenants, tenant)
      return nil
    end
    local id = head[1]
    if redis.call('ZSCORE', queue, id) and not in_progress(id) then
      local due = tonumber(redis.call('GET', due_prefix .. id)) or now
      if due > now then return nil end
      return id, due
    end
    redis.call('ZREM', key, id)
    redis.call('HDEL', jobs, id)
  end
end

local order = redis.call('ZRANGE', tenants, 0, max_tenants - 1)
local room = {}
local claimed = {now}
local progress = true
while progress and #claimed < want * 2 + 1 do
  progress = false
  for _, tenant in ipairs(order) do
    if #claimed >= want * 2 + 1 then break end
    if room[tenant] == nil then room[tenant] = room_of(tenant) end
    if room[tenant] > 0 then
      local id, due = next_ready(tenant)
      if id then
        redis.call('SET', 'arq:in-progress:' .. id, '1', 'PX', lease_ms)
        redis.call('ZREM', fair .. 'q:' .. tenant, id)
        redis.call('HDEL', jobs, id)
        if room[tenant] ~= math.huge then
          redis.call('ZADD', fair .. 'running:' .. tenant, now, id)
        end
        if redis.call('EXISTS', fair .. 'q:' .. tenant) == 1 then
          redis.call('ZADD', tenants, redis.call('INCR', fair .. 'turn'), tenant)
        else
          redis.call('ZREM', tenants, tenant)
        end
        room[tenant] = room[tenant] - 1
        claimed[#claimed + 1] = id
        claimed[#claimed + 1] = due
        progress = true
      else
        room[tenant] = 0
      end
    end
  end
end
return claimed
