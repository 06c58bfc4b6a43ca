"""Deployment checks: docker-compose.yml, its SASL override, the Dockerfile, the nginx
configuration and the broker scripts, against the real tools (Debian's docker-compose,
shellcheck, nginx -t, keytool and a JSSE server on java). No server of the pipeline runs;
scripts/test.sh installs the tools."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.deployment
