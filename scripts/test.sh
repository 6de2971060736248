#!/usr/bin/env bash
# Run the project's checks: ruff, then pytest (extra arguments go to pytest).
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -q -k go   # pytest options pass through
#
# Needs python3 (3.11+) on PATH. The tests also need the Debian tools skopeo, umoci,
# docker-registry and git, a PostgreSQL server (the scale-out test) and Chromium (the
# UI check); when one is missing and we are root with apt-get, they are installed here.
set -euo pipefail

cd "$(dirname "$0")/.."

missing=()
for tool in skopeo umoci docker-registry git chromium; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing missing tools: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends \
            skopeo umoci docker-registry git ca-certificates postgresql chromium
    else
        echo "test.sh: warning: missing tools (${missing[*]}); not root or no apt-get," \
            "so not installing them; tests that need them will fail or skip" >&2
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    python=$(command -v python3 || true)
    if [[ -z "$python" ]]; then
        echo "test.sh: python3 not found on PATH (need Python 3.11+)" >&2
        exit 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "test.sh: $python is $("$python" -V 2>&1); need Python 3.11+" >&2
        exit 1
    fi
    "$python" -m venv .venv
fi

.venv/bin/pip install -q -e '.[test]'

export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}"

.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
