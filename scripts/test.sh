#!/usr/bin/env bash
# Runs every test tier: unit, integration (real PostgreSQL + real broker), end-to-end
# (the contract's processes as OS processes), plus lint and type checks.
# Sets up .venv on first use. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -e '.[dev]'

scripts/ensure-postgres.sh
scripts/ensure-redis.sh

# The deployment tests validate docker-compose.yml (and its SASL override) with Debian's
# docker-compose, lint the broker scripts with shellcheck, and load the broker's TLS
# files with keytool and a JSSE server.
missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v shellcheck >/dev/null || missing+=(shellcheck)
{ command -v keytool && command -v java; } >/dev/null || missing+=(default-jdk-headless)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} (Debian) for the deployment checks" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The bundled broker must start here, or the run stops now, loudly.
.venv/bin/python - <<'PY'
from devtools.broker import LocalBroker
with LocalBroker() as broker:
    print(f"broker: Tansu answers on {broker.bootstrap_servers}")
PY

.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
