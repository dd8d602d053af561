#!/usr/bin/env bash
# Make sure a Redis answers on REDIS_HOST:REDIS_PORT (default 127.0.0.1:6379): use the one that is
# running, else start one, installing Debian's redis-server if needed. The one started here is set up
# as the pool needs it in production (RELIABILITY.md): append-only file fsynced every second, kept
# in the user's cache directory, and no eviction.
set -euo pipefail
host="${REDIS_HOST:-127.0.0.1}"
port="${REDIS_PORT:-6379}"

ping() {
  # No redis-cli needed: speak RESP over bash's /dev/tcp.
  { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  local reply=""
  IFS= read -r -t 2 reply <&3 || true
  exec 3>&- 3<&-
  [[ "$reply" == +PONG* ]]
}

if ping; then
  echo "redis: answering on $host:$port"
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: redis-server not found, installing Debian's redis-server"
  if [[ "$(id -u)" == 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
data="${XDG_CACHE_HOME:-$HOME/.cache}/llm-pool/redis-$port"
mkdir -p "$data"
echo "redis: starting redis-server on $host:$port (data in $data)"
redis-server --daemonize yes --bind "$host" --port "$port" --save '' \
  --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
  --dir "$data" --logfile "$data/redis.log"
for _ in $(seq 1 50); do
  if ping; then echo "redis: ready"; exit 0; fi
  sleep 0.1
done
echo "redis: did not start; see $data/redis.log" >&2
exit 1
