#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432: starts the local cluster,
# installs PostgreSQL from Debian's packages if there is none. Exits non-zero, loudly,
# when it still cannot be reached: the tests must never silently skip the database.
set -euo pipefail

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if command -v pg_isready >/dev/null && ready; then exit 0; fi

if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  echo "ensure-postgres: no PostgreSQL cluster here; installing it from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
conf=/etc/postgresql/$version/main
# Tests connect as postgres over TCP without a password (trust on loopback only).
if ! grep -q "^host all all 127.0.0.1/32 trust" "$conf/pg_hba.conf"; then
  echo "ensure-postgres: letting local TCP connections in without a password (trust on 127.0.0.1 only) in $conf/pg_hba.conf" >&2
  sed -i '1i host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"
fi
grep -q "^listen_addresses" "$conf/postgresql.conf" ||
  echo "listen_addresses = '127.0.0.1'" >> "$conf/postgresql.conf"

pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null ||
  pg_ctlcluster --skip-systemctl-redirect "$version" main restart

for _ in $(seq 1 30); do
  if ready; then exit 0; fi
  sleep 1
done
echo "ensure-postgres: FAILED: PostgreSQL does not answer on 127.0.0.1:5432" >&2
exit 1
