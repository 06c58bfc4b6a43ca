#!/usr/bin/env bash
# Runs every test tier, each as its own pytest run, in this order, and says how long each
# took: unit (hermetic: no server, no external tool), integration (real PostgreSQL, Redis
# and broker), deployment (docker-compose, shellcheck, keytool, java on the deployment
# files), e2e (the contract's processes as OS processes), faults, fuzz. Lint and type
# checks run first. Sets up .venv on first use. Extra arguments go to every pytest run.
#
# Stops at the first failing tier (a tier that collects no test fails too). The last line
# is always the whole run's totals, for CI:  N passed, N failed, N skipped
set -euo pipefail
cd "$(dirname "$0")/.."

TIERS=(unit integration deployment e2e faults fuzz)

# The broker each tier runs against (tests/brokers.py): the end-to-end and fault tiers on a
# local three-node Apache Kafka cluster with production topic settings, the others on the
# bundled Tansu broker. TEST_KAFKA (tansu, apache, apache:N) or KAFKA_BOOTSTRAP_SERVERS,
# when set, choose for every tier.
broker_for() {
  case "$1" in
    e2e | faults) echo "${TEST_KAFKA:-apache:3}" ;;
    *) echo "${TEST_KAFKA:-tansu}" ;;
  esac
}

# With a selection of one's own (-k, -m, --deselect, a node id), a tier where it selects
# nothing is fine; without one, a tier that collects nothing is a broken tier.
selecting=0
for arg in "$@"; do
  case "$arg" in -k | -k* | -m | -m* | --deselect* | --lf | --last-failed | *::*) selecting=1 ;; esac
done

setup_started=$SECONDS
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -e '.[dev]'

scripts/ensure-postgres.sh
scripts/ensure-redis.sh
# nginx in front of the APIs, as `dev` and docker-compose run it (the slow-client test,
# the dev tests, nginx -t on deploy/nginx/).
scripts/ensure-nginx.sh
scripts/ensure-kafka-jars.sh

# The deployment tier validates docker-compose.yml (and its SASL override) with Debian's
# docker-compose, lints the broker scripts with shellcheck, and loads the broker's TLS
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

# Every directory of tests must be a tier, or its tests would never run.
for dir in tests/*/; do
  name=$(basename "$dir")
  compgen -G "$dir/test_*.py" >/dev/null || continue
  if [[ " ${TIERS[*]} " != *" $name "* ]]; then
    echo "tests/$name holds tests but is not a tier of scripts/test.sh" >&2
    exit 1
  fi
done
echo "== setup (venv, PostgreSQL, Redis, tools, broker, ruff, mypy) in $((SECONDS - setup_started)) s"

reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
total_passed=0
total_failed=0
total_skipped=0

# passed failed skipped, read from a tier's JUnit XML (errors count as failed).
counts() {
  .venv/bin/python - "$1" <<'PY'
import sys
import xml.etree.ElementTree as ElementTree

try:
    root = ElementTree.parse(sys.argv[1]).getroot()
except (OSError, ElementTree.ParseError):
    print(0, 0, 0)
    raise SystemExit
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
failed = total["failures"] + total["errors"]
print(total["tests"] - failed - total["skipped"], failed, total["skipped"])
PY
}

summary() {
  echo "$total_passed passed, $total_failed failed, $total_skipped skipped"
}

for tier in "${TIERS[@]}"; do
  broker=$(broker_for "$tier")
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then broker="KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"; fi
  echo "== $tier: starting (broker: $broker)"
  started=$SECONDS
  status=0
  TEST_KAFKA=$(broker_for "$tier") .venv/bin/python -m pytest "tests/$tier" --junitxml="$reports/$tier.xml" --durations=8 "$@" || status=$?
  elapsed=$((SECONDS - started))
  read -r passed failed skipped < <(counts "$reports/$tier.xml")
  total_passed=$((total_passed + passed))
  total_skipped=$((total_skipped + skipped))
  if ((status == 5 && selecting)); then
    echo "== $tier: nothing selected, in $elapsed s"
    continue
  elif ((status == 5)); then
    echo "== $tier: FAILED, no test collected, in $elapsed s"
    total_failed=$((total_failed + 1))
  elif ((status != 0)); then
    ((failed > 0)) || failed=1 # pytest failed without a failing test (usage, internal error)
    total_failed=$((total_failed + failed))
    echo "== $tier: FAILED (pytest exit $status): $passed passed, $failed failed, $skipped skipped in $elapsed s"
  else
    echo "== $tier: $passed passed, $skipped skipped in $elapsed s"
    continue
  fi
  summary
  exit 1
done
summary
