"""Claiming jobs: tenants take turns, each within its concurrency cap, in one Lua round trip.

One call of ``CLAIM_LUA`` does three things atomically:

1. indexes the newest queue entries (up to ``index_newest``) that the fair-share index has not
   seen (jobs enqueued by plain arq), reading each one's tenant from its JSON envelope; an empty
   queue costs one read;
2. at most every ``sweep_period_ms`` (one worker at a time), indexes the next ``sweep_batch``
   queue entries that are neither indexed nor claimed: jobs that came back to the queue after
   their worker died or was drained, and any the first step missed;
3. claims up to ``want`` jobs round-robin over the tenants in turn order, one job per tenant per
   pass, skipping tenants at their cap. A claim is arq's own (``SET arq:in-progress:{id} NX``,
   here with a lease renewed by the worker), so plain arq workers on the same queue cooperate.

A tenant's running jobs are those of ``P:fair:running:{tenant}`` whose ``arq:in-progress:`` key
still exists: arq deletes it when the job ends, and a dead worker's lease expires, so the count
needs no bookkeeping at the end of a job and survives crashes.

Returns ``[job_id, score, job_id, score, ...]`` of the jobs claimed.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from llm_pool.fairness import FAIR_ADD_LUA, fair_prefix
from llm_pool.keys import Keys
from llm_pool.settings import TenantsSection

# KEYS[1]: queue.
# ARGV: 1 now (ms), 2 how many to claim, 3 lease (ms), 4 default cap (0: none), 5 caps by tenant
# (JSON object), 6 newest entries to index, 7 sweep batch, 8 sweep period (ms), 9 index prefix,
# 10 most tenants looked at per call.
CLAIM_LUA = (
    FAIR_ADD_LUA
    + r"""
local queue = KEYS[1]
local now = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local prefix = ARGV[9]
local jobs = prefix .. 'jobs'
local tenants = prefix .. 'tenants'

local function in_progress(id)
  return redis.call('EXISTS', 'arq:in-progress:' .. id) == 1
end

local function tenant_of(id)
  local envelope = redis.call('GET', 'arq:job:' .. id)
  if not envelope then return '' end
  local ok, job = pcall(cjson.decode, envelope)
  if not ok or type(job) ~= 'table' or type(job.a) ~= 'table' or type(job.a[1]) ~= 'table' then
    return ''
  end
  local tenant = job.a[1].tenant_id
  if type(tenant) ~= 'string' or #tenant > 64 then return '' end
  local hex = string.gsub(string.lower(tenant), '[{}%-]', '')
  if not string.match(hex, '^%x+$') or #hex ~= 32 then return '' end
  return string.sub(hex, 1, 8) .. '-' .. string.sub(hex, 9, 12) .. '-' .. string.sub(hex, 13, 16)
    .. '-' .. string.sub(hex, 17, 20) .. '-' .. string.sub(hex, 21, 32)
end

local function index_if_new(id, score)
  if redis.call('HEXISTS', jobs, id) == 0 and not in_progress(id) then
    fair_add(prefix, id, score, tenant_of(id))
  end
end

-- 1. the newest entries, indexed oldest first so that tenants take turns in order of arrival
local newest = redis.call('ZREVRANGE', queue, 0, tonumber(ARGV[6]) - 1, 'WITHSCORES')
if #newest == 0 then return {} end
for i = #newest - 1, 1, -2 do
  index_if_new(newest[i], newest[i + 1])
end

-- 2. the sweep
if redis.call('SET', prefix .. 'sweep', '1', 'NX', 'PX', ARGV[8]) then
  local at = tonumber(redis.call('GET', prefix .. 'sweep-at') or '0')
  local batch = tonumber(ARGV[7])
  local entries = redis.call('ZRANGE', queue, at, at + batch - 1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    index_if_new(entries[i], entries[i + 1])
  end
  if #entries < batch * 2 then at = 0 else at = at + batch end
  redis.call('SET', prefix .. 'sweep-at', at)
end

-- 3. claims, round-robin over tenants
local caps = cjson.decode(ARGV[5])
local default_cap = tonumber(ARGV[4])

local function room_of(tenant)
  local cap = caps[tenant] or default_cap
  if cap <= 0 then return math.huge end
  local key = prefix .. 'running:' .. tenant
  local running = 0
  for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if in_progress(id) then running = running + 1 else redis.call('ZREM', key, id) end
  end
  return cap - running
end

-- The tenant's first job that can run now, dropping index entries that are stale (the job left
-- the queue, or someone else claimed it); nil when it has none ready.
local function next_ready(tenant)
  local key = prefix .. 'q:' .. tenant
  while true do
    local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #head == 0 then
      redis.call('DEL', key)
      redis.call('ZREM', tenants, tenant)
      return nil
    end
    local id = head[1]
    local score = redis.call('ZSCORE', queue, id)
    if score and not in_progress(id) then
      if tonumber(score) > now then return nil end
      return id, score
    end
    redis.call('ZREM', key, id)
    redis.call('HDEL', jobs, id)
  end
end

local order = redis.call('ZRANGE', tenants, 0, tonumber(ARGV[10]) - 1)
local room = {}
local claimed = {}
local progress = true
while progress and #claimed < want * 2 do
  progress = false
  for _, tenant in ipairs(order) do
    if #claimed >= want * 2 then break end
    if room[tenant] == nil then room[tenant] = room_of(tenant) end
    if room[tenant] > 0 then
      local id, score = next_ready(tenant)
      if id then
        redis.call('SET', 'arq:in-progress:' .. id, '1', 'PX', ARGV[3])
        redis.call('ZREM', prefix .. 'q:' .. tenant, id)
        redis.call('HDEL', jobs, id)
        if room[tenant] ~= math.huge then
          redis.call('ZADD', prefix .. 'running:' .. tenant, now, id)
        end
        if redis.call('EXISTS', prefix .. 'q:' .. tenant) == 1 then
          redis.call('ZADD', tenants, redis.call('INCR', prefix .. 'turn'), tenant)
        else
          redis.call('ZREM', tenants, tenant)
        end
        room[tenant] = room[tenant] - 1
        claimed[#claimed + 1] = id
        claimed[#claimed + 1] = score
        progress = true
      else
        room[tenant] = 0
      end
    end
  end
end
return claimed
"""
)


class Claimer:
    """Claims jobs for one worker: ``await claimer.claim(n)`` -> ``[(job_id, score), ...]``."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        tenants: TenantsSection,
        *,
        lease_ms: int,
        index_newest: int = 50,
        sweep_batch: int = 1000,
        sweep_period_ms: int = 250,
        max_tenants: int = 1000,
    ) -> None:
        self._script = redis.register_script(CLAIM_LUA)
        self._queue = keys.queue
        self._static_args: list[Any] = [
            lease_ms,
            tenants.default.max_concurrent,
            json.dumps({t: limits.max_concurrent for t, limits in tenants.overrides.items()}),
            index_newest,
            sweep_batch,
            sweep_period_ms,
            fair_prefix(keys),
            max_tenants,
        ]

    async def claim(self, now_ms: int, count: int) -> list[tuple[str, int]]:
        flat = await self._script(keys=[self._queue], args=[now_ms, count, *self._static_args])
        return [
            (raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id), int(float(raw_score)))
            for raw_id, raw_score in zip(flat[::2], flat[1::2], strict=True)
        ]
