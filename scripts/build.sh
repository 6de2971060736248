#!/usr/bin/env bash
# Run the main job: build a Go service into a container image with the
# `multistage-build` Prefect flow. With no PREFECT_API_URL, the first build starts a
# local Prefect API server that later builds reuse (it stops after an idle hour, or
# with `.venv/bin/python -m flows.local_api stop`; see README, "The local Prefect API").
#
#   bash scripts/build.sh examples/hello-go
#   bash scripts/build.sh examples/hello-go --platform linux/amd64 --platform linux/arm64 \
#       --tag registry.example.com/team/hello:1.0.0
#
# Needs python3 (3.11+) and a Dagger engine: Docker (or another container runtime)
# on this machine, a running `dagger session` (DAGGER_SESSION_PORT/TOKEN), or a
# remote engine in _EXPERIMENTAL_DAGGER_RUNNER_HOST. Without one it says so in one
# line and exits 2; see scripts/try-without-docker.sh to see the flow anyway.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ ! -x .venv/bin/python ]]; then
    python=$(command -v python3 || true)
    if [[ -z "$python" ]] || ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "build.sh: need python3 3.11+ on PATH" >&2
        exit 1
    fi
    "$python" -m venv .venv
fi
.venv/bin/pip install -q -e . >/dev/null

exec .venv/bin/python -m flows.build "${@:-examples/hello-go}"
