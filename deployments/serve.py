"""Serve the ``multistage-build`` deployments from one long-running process.

    python -m deployments.serve [--limit N]

Three deployments, each of the same flow:

- ``nightly``: cron ``0 2 * * *`` in the configured timezone, building the source of
  ``deployments/nightly.toml`` (see :mod:`deployments.config`), tagged nightly when
  it publishes.
- ``on-demand``: no schedule; for the UI's "Run" form, ``prefect deployment run`` and
  the REST API.
- ``on-push``: no schedule; an automation runs it for every ``git.push`` event,
  mapping the event's ``payload.repository`` and ``payload.ref`` to ``source`` and
  ``git_ref``.

Serving needs no work pool or worker: the process polls the API and runs each flow
run in a subprocess of its own. Teams that run workers use ``prefect.yaml`` instead
(the same deployments on a process work pool), then ``python -m deployments.setup``,
which closes their schemas and registers the crash automation as serving does
(the pieces both use are in ``deployments/common.py``). Either way, engine work is
capped by the ``gobuild-engine`` global concurrency limit (see ``tasks/session.py``),
so simultaneous triggers queue for the engine instead of overloading it.

A run whose process dies (the serving process killed, a machine lost) stops
sending heartbeats (every 30 s here, ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``); an
automation registered with the deployments marks such a run Crashed once none has
come for ``GOBUILD_HEARTBEAT_GRACE_SECONDS`` (default 90 s), and its engine slot,
a lease, returns once the lease runs out. Rerunning it resumes from the stages
Prefect had cached.

The configuration is validated before anything is registered: a bad one is a
one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING, Any

from deployments.common import (  # CRASH_AUTOMATION: importable from here, as before
    CRASH_AUTOMATION,  # noqa: F401
    HEARTBEAT_SECONDS,
    REQUIRED_PARAMETERS,
    SetupError,
    closed_schema,
    heartbeat_grace_seconds,
    register_crash_automation,
)
from deployments.config import ConfigError, NightlyConfig, load_nightly_config

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

# Runs beyond this stay Scheduled until a process frees up; runs within it wait for an
# engine slot. Each waiting run is a Python process, hence a cap; it must stay above
# the engine limit, or the runner (not the engine limit) would decide what queues.
DEFAULT_SERVE_LIMIT = 8

PUSH_EVENT = "git.push"
# Jinja, rendered by the Prefect server when the automation fires. A single
# expression keeps its JSON type; a push without a ref builds the default branch.
# A push without a repository still makes a run, which fails at once in its
# parameters ("source: must not be empty") with a failure report: a visible trace,
# where a template error would only leave an automation event behind.
PUSH_PARAMETERS = {
    "source": "{{ event.payload.repository | default('') }}",
    "git_ref": "{{ event.payload.ref | default('') }}",
}


def build_deployments(
    config: NightlyConfig, *, test_interval_seconds: float | None = None
) -> list[RunnerDeployment]:
    """The deployments to serve; also used by tests to inspect what would be served."""
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron, Interval

    from flows.build import multistage_build

    # A module path, not a file path: the entrypoint then works from any directory
    # the package is importable from, and the UI shows where the flow lives.
    common = {"entrypoint_type": EntrypointType.MODULE_PATH}
    nightly = multistage_build.to_deployment(
        "nightly",
        schedules=[Cron(config.cron, timezone=config.timezone)],
        parameters=config.parameters,
        # Both Prefect UIs render deployment descriptions as Markdown, and the CLI and
        # API show them as typed: so no backticks, no "<...>", and no "*" but the
        # cron's own (each between spaces, inert in Markdown; a "GOBUILD_NIGHTLY_*"
        # next to the cron turned into emphasis). tests/test_ui.py checks both UIs.
        description=(
            f"Nightly build of {config.parameters['source']}, on cron '{config.cron}' in "
            f"timezone {config.timezone}. Set in deployments/nightly.toml (or the file "
            "named by GOBUILD_NIGHTLY_CONFIG); GOBUILD_NIGHTLY_SOURCE, GOBUILD_NIGHTLY_CRON, "
            "GOBUILD_NIGHTLY_TZ and the other GOBUILD_NIGHTLY variables override it."
        ),
        tags=["gobuild", "nightly"],
        **common,
    )
    on_demand = multistage_build.to_deployment(
        "on-demand",
        description=(
            "Build on request, from the UI (Run, then Custom run), the CLI (prefect "
            "deployment run) or the REST API; source is required."
        ),
        tags=["gobuild", "on-demand"],
        **common,
    )
    on_push = multistage_build.to_deployment(
        "on-push",
        triggers=[
            DeploymentEventTrigger(
                name="gobuild: build on git.push",
                description=(
                    "Runs multistage-build/on-push for each git.push event; "
                    "payload.repository -> source, payload.ref -> git_ref."
                ),
                expect={PUSH_EVENT},
                parameters=dict(PUSH_PARAMETERS),
            )
        ],
        description=(
            f"Build the pushed repository at the pushed ref, for each {PUSH_EVENT} event "
            "(payload: repository, ref)."
        ),
        tags=["gobuild", "on-push"],
        **common,
    )
    deployments = [nightly, on_demand, on_push]
    for deployment in deployments:
        closed_parameters(deployment, required=REQUIRED_PARAMETERS.get(deployment.name, ()))
    if test_interval_seconds:
        # TEST ONLY: the nightly parameters on a short interval, so that tests can
        # watch scheduled runs happen without waiting for 02:00. It starts paused, so
        # that a test decides when its runs begin (POST .../resume_deployment).
        deployments.append(
            multistage_build.to_deployment(
                "nightly-test-interval",
                schedules=[Interval(test_interval_seconds)],
                paused=True,
                parameters=config.parameters,
                description=(
                    f"TEST ONLY: the nightly build every {test_interval_seconds:g} s "
                    "(--test-interval-seconds); starts paused."
                ),
                tags=["gobuild", "test-only"],
                **common,
            )
        )
    return deployments


def closed_parameters(deployment: Any, required: tuple[str, ...] = ()) -> None:
    """Give the deployment's parameter schema ``additionalProperties: false``, so
    that the server refuses a run with a misspelled parameter name (409) when it is
    created, instead of accepting a run that crashes when the flow is called.

    ``required`` parameters lose their default: an on-demand run must name its
    source (the flow's default ".", the serving process's directory, is never what
    a user clicking "Quick run" means)."""
    from prefect.utilities.callables import ParameterSchema

    class ClosedParameterSchema(ParameterSchema):
        additionalProperties: bool = False  # the JSON-schema keyword

    schema = closed_schema(
        deployment._parameter_openapi_schema.model_dump(exclude_unset=True), required
    )
    deployment._parameter_openapi_schema = ClosedParameterSchema(**schema)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m deployments.serve",
        description=(
            "Serve the multistage-build deployments nightly, on-demand and on-push "
            "(needs PREFECT_API_URL of a Prefect server)."
        ),
    )
    ap.add_argument(
        "--limit",
        type=int,  # argparse converts (and reports) a string default too
        default=os.environ.get("GOBUILD_SERVE_LIMIT", str(DEFAULT_SERVE_LIMIT)),
        help=(
            "flow runs this process executes at once (env GOBUILD_SERVE_LIMIT, "
            f"default {DEFAULT_SERVE_LIMIT}); engine work is capped separately by the "
            "gobuild-engine global concurrency limit"
        ),
    )
    ap.add_argument(
        "--test-interval-seconds",
        type=float,
        default=None,
        help=(
            "TEST ONLY: also serve 'nightly-test-interval', the nightly build on this "
            "short interval, paused until resumed"
        ),
    )
    args = ap.parse_args(argv)
    if args.limit < 1:
        ap.error("--limit must be at least 1")
    if args.test_interval_seconds is not None and args.test_interval_seconds <= 0:
        ap.error("--test-interval-seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Before Prefect reads its settings; the flow-run subprocesses inherit it.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", HEARTBEAT_SECONDS)
    try:
        grace = heartbeat_grace_seconds()
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        config = load_nightly_config()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from prefect import serve
    from prefect.settings import get_current_settings

    from tasks.preflight import EngineUnavailable, preflight

    if not get_current_settings().api.url:  # env or the active profile
        print(
            "warning: PREFECT_API_URL is not set: serving against a temporary in-process "
            "Prefect server that disappears with this process",
            file=sys.stderr,
        )

    try:
        preflight()
    except EngineUnavailable as exc:  # the engine may come up later: serve anyway
        print(f"warning: {exc}; runs fail until an engine is reachable", file=sys.stderr)
    deployments = build_deployments(config, test_interval_seconds=args.test_interval_seconds)
    asyncio.run(register_crash_automation(grace))
    print(
        f"nightly: {config.cron} {config.timezone}, source {config.parameters['source']} "
        f"(from {config.origins.get('source', '?')})",
        file=sys.stderr,
        flush=True,
    )
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
