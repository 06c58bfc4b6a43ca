"""nginx in front of the APIs, as `signup-pipeline dev` runs it: the one configuration of
deploy/nginx/ (docker-compose renders the same template), run as the current user with
its pid file and temporary files under a directory of ours.

nginx reads each request whole before an API's gunicorn thread sees it, so slow or idle
clients hold nginx connections, never API threads (issue 16). It comes from Debian's
packages (`scripts/ensure-nginx.sh`); without it `dev` serves the APIs directly, saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "nginx.conf.template"

# The names the template takes, each `${NAME}` in it; nothing else is substituted (nginx's
# own `$remote_addr` and the like stay as they are).
PLACEHOLDER = re.compile(r"\$\{(PROXY_[A-Z_]+)\}")

# Where Debian puts it; not on PATH for a user whose PATH lacks /usr/sbin.
_DEBIAN_NGINX = Path("/usr/sbin/nginx")


class ProxyError(RuntimeError):
    """The proxy cannot be set up (no nginx, a placeholder without a value)."""


def nginx_binary() -> str | None:
    """The nginx executable, or None when nginx is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return str(_DEBIAN_NGINX) if _DEBIAN_NGINX.exists() else None


def render(values: Mapping[str, str], template: Path = TEMPLATE) -> str:
    """The template with each `${PROXY_*}` replaced by its value; every one must have
    one (as the nginx image's envsubst would leave an unset one empty, silently)."""
    text = template.read_text()
    missing = sorted(set(PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise ProxyError(f"no value for {', '.join(missing)} in {template}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def placeholders(template: Path = TEMPLATE) -> set[str]:
    """The `${PROXY_*}` names the template takes."""
    return set(PLACEHOLDER.findall(template.read_text()))


def local_values(
    state_dir: Path, listen: Mapping[str, str], upstream: Mapping[str, str]
) -> dict[str, str]:
    """The template's values for a run on this machine: per service (`auth`, ...) the
    address nginx listens on and the API's own address, both host:port."""
    values = {"PROXY_STATE_DIR": str(state_dir)}
    for service, address in listen.items():
        values[f"PROXY_{service.upper()}_LISTEN"] = address
    for service, address in upstream.items():
        values[f"PROXY_{service.upper()}_UPSTREAM"] = address
    return values


def prepare(state_dir: Path, values: Mapping[str, str]) -> Path:
    """Write the rendered configuration into `state_dir` (created); its path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "nginx.conf"
    config.write_text(render(values))
    return config


def command(binary: str, state_dir: Path, config: Path, *, test: bool = False) -> list[str]:
    """nginx's command line: in the foreground (`daemon off`, as the nginx image runs
    it), `state_dir` as its prefix, errors to stderr from the first line on (never the
    compiled-in /var/log/nginx, which a user cannot open); `test`: `nginx -t`."""
    argv = [binary, "-p", f"{state_dir}/", "-c", str(config), "-e", "stderr"]
    return [*argv, "-t"] if test else [*argv, "-g", "daemon off;"]


def check(binary: str, state_dir: Path, config: Path) -> None:
    """`nginx -t` on the configuration; raises with nginx's own words if it fails."""
    result = subprocess.run(
        command(binary, state_dir, config, test=True),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise ProxyError(f"nginx -t failed: {(result.stderr or result.stdout).strip()}")


__all__ = [
    "TEMPLATE",
    "ProxyError",
    "check",
    "command",
    "local_values",
    "nginx_binary",
    "placeholders",
    "prepare",
    "render",
]
