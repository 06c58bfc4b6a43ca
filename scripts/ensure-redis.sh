#!/usr/bin/env bash
# Makes sure a Redis server answers on 127.0.0.1:6379 (the rate-limit tests share their
# counts through it): starts one, installing it from Debian's packages if there is none.
# Exits non-zero, loudly, when it still cannot be reached: a test never skips Redis.
set -euo pipefail

ready() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if command -v redis-cli >/dev/null && ready; then exit 0; fi

if ! command -v redis-server >/dev/null; then
  echo "ensure-redis: no Redis here; installing it from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server >/dev/null
fi

# Loopback only, no persistence: it holds nothing but test counters.
redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no \
  --logfile /tmp/ensure-redis.log

for _ in $(seq 1 30); do
  if ready; then exit 0; fi
  sleep 0.5
done
echo "ensure-redis: FAILED: Redis does not answer on 127.0.0.1:6379 (see /tmp/ensure-redis.log)" >&2
exit 1
