#!/usr/bin/env bash
# Makes sure nginx is installed (not started: `signup-pipeline dev` and the tests run their
# own, as the current user, in front of the APIs; see deploy/nginx/). Installs it from
# Debian's packages if there is none. Exits non-zero, loudly, when it still is not there:
# a test never skips the proxy.
set -euo pipefail

found() { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }

if found; then exit 0; fi

echo "ensure-nginx: no nginx here; installing it from Debian's packages" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-nginx: FAILED: installing needs root (run: sudo apt-get install nginx)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Where an init system runs, Debian's package also starts a system nginx on port 80 (its
# default site); the pipeline never uses that one.
apt-get install -y -qq --no-install-recommends nginx >/dev/null

if ! found; then
  echo "ensure-nginx: FAILED: nginx is still not installed (apt-get install nginx)" >&2
  exit 1
fi
