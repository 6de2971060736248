"""Finish the worker deployments that ``prefect deploy --all`` made from
``prefect.yaml``, so that they behave like the served ones.

    prefect --no-prompt deploy --all        # from the repository root
    python -m deployments.setup             # after every deploy

``prefect deploy`` writes each deployment's parameter schema from the flow's
signature, open to any name, and registers no automation but the ones in
``prefect.yaml``. ``python -m deployments.serve`` does two more things that a
worker user needs too (``deployments/common.py``), and this command does them
for the deployed ``nightly``, ``on-demand`` and ``on-push``:

- closes their parameter schemas (``additionalProperties: false``; the
  on-demand ``source`` required, without a default), so a misspelled parameter
  name is refused with 409 when the run is created rather than crashing the run;
- registers the automation that marks a run Crashed when its heartbeats stop for
  ``GOBUILD_HEARTBEAT_GRACE_SECONDS`` (default 90 s);
- makes sure the runs send those heartbeats: each deployment's job variables get
  ``env.PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30`` unless they set it already
  (``prefect.yaml`` does; a worker passes job-variable ``env`` to the run).

It is idempotent, and needed again after each ``prefect deploy``, which writes
the open schema back. It needs ``PREFECT_API_URL``; a missing deployment or a bad
setting is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from deployments.common import (
    DEPLOYMENT_NAMES,
    FLOW_NAME,
    HEARTBEAT_SECONDS,
    REQUIRED_PARAMETERS,
    SetupError,
    closed_schema,
    heartbeat_grace_seconds,
    register_crash_automation,
)

HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


def with_heartbeats(job_variables: dict[str, Any] | None) -> dict[str, Any]:
    """The deployment's job variables with the heartbeat setting in the run's
    environment (a value already there is the operator's and is kept)."""
    variables = dict(job_variables or {})
    env = dict(variables.get("env") or {})
    env.setdefault(HEARTBEAT_ENV, HEARTBEAT_SECONDS)
    variables["env"] = env
    return variables


async def setup(names: tuple[str, ...] = DEPLOYMENT_NAMES, *, grace: float) -> list[str]:
    """Close the schemas of the deployed ``names``, give their runs heartbeats, and
    register the crash automation; -> one line per thing done."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    done = []
    async with get_client() as client:
        deployments = {}
        for name in names:
            try:
                deployments[name] = await client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
            except ObjectNotFound:
                raise SetupError(
                    f"deployment {FLOW_NAME}/{name} not found on {client.api_url}: "
                    "run `prefect --no-prompt deploy --all` from the repository root first"
                ) from None
        for name, dep in deployments.items():
            required = REQUIRED_PARAMETERS.get(name, ())
            update = DeploymentUpdate(
                parameter_openapi_schema=closed_schema(dep.parameter_openapi_schema, required),
                enforce_parameter_schema=True,
                job_variables=with_heartbeats(dep.job_variables),
            )
            await client.update_deployment(dep.id, update)
            also = f"; {', '.join(required)} required" if required else ""
            done.append(
                f"{FLOW_NAME}/{name}: unknown parameter names refused{also}; runs send "
                f"heartbeats ({HEARTBEAT_ENV}="
                f"{update.job_variables['env'][HEARTBEAT_ENV]})"  # type: ignore[index]
            )
    await register_crash_automation(grace)
    done.append(f"automation: runs without a heartbeat for {grace:g} s are marked Crashed")
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m deployments.setup",
        description=(
            "After `prefect deploy --all`: close the multistage-build deployments' "
            "parameter schemas, give their runs heartbeats and register the automation "
            "that marks runs whose heartbeats stopped as Crashed (needs PREFECT_API_URL)."
        ),
    )
    ap.parse_args(sys.argv[1:] if argv is None else argv)

    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        # Without it the client would start a temporary in-process server and set
        # up deployments that do not exist there.
        print("error: PREFECT_API_URL is not set: point it at your Prefect server",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        for line in asyncio.run(setup(grace=heartbeat_grace_seconds())):
            print(line)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
