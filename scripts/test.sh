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

# The deployment tests validate docker-compose.yml with Debian's docker-compose.
if ! command -v docker-compose >/dev/null; then
  echo "installing docker-compose (Debian) for the compose file checks" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi

# The bundled broker must start here, or the run stops now, loudly.
.venv/bin/python - <<'PY'
from shared.broker import LocalBroker
with LocalBroker() as broker:
    print(f"broker: Tansu answers on {broker.bootstrap_servers}")
PY

.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
