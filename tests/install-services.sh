#!/usr/bin/env bash
# What the test suite needs beyond Python packages, installed when it is missing (Debian, Ubuntu):
# - PostgreSQL and Redis binaries: search/bench/servers.py starts servers of its own from them, on free
#   loopback ports in temporary folders; a server the package may start on 5432 is never used;
# - Chromium, which tests/search_tests/test_mlflow_ui.py drives headless through Playwright (the
#   dev extra), so that Playwright downloads no browser;
# - the `postgres` system user, which runs PostgreSQL when the tests run as root.
# README.md's test command and .ci/run run this; it changes nothing on a machine that has it all.
set -euo pipefail

missing=()
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    as_root=(sudo)
  elif [ ${#missing[@]} -gt 0 ]; then
    echo "tests/install-services.sh: ${missing[*]} missing, and installing needs root:" \
      "run this as root or install them with your package manager" >&2
    exit 2
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "tests/install-services.sh: ${missing[*]} missing and apt-get not found:" \
      "install them with your package manager (Chromium as /usr/bin/chromium)" >&2
    exit 2
  fi
  echo "tests/install-services.sh: installing ${missing[*]}"
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PostgreSQL refuses to run as root: tests running as root run it as the postgres user.
if [ "$(id -u)" -eq 0 ] && ! id -u postgres >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/false postgres
fi
