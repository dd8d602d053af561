-- Take or keep the lease of the wake-up relay (worker/wakeups.py): one worker at a time relays.
--
-- KEYS[1]  the lease (P:wake-relay)
-- ARGV[1]  this worker's id
-- ARGV[2]  lease (ms)
-- Returns 1 if this worker holds the lease now (taken or renewed), 0 if another does.

local lease, me, lease_ms = KEYS[1], ARGV[1], ARGV[2]
if redis.call('GET', lease) == me or redis.call('SET', lease, me, 'NX', 'PX', lease_ms) then
  redis.call('PEXPIRE', lease, lease_ms)
  return 1
end
return 0
