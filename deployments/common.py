"""What every way of running the deployments needs, served or on workers.

``python -m deployments.serve`` and ``python -m deployments.setup`` (run after
``prefect deploy --all``) both use these, so that a build behaves the same
whichever the team chose:

- parameter schemas closed to unknown names (:func:`closed_schema`): a misspelled
  parameter is refused with 409 when the run is created, instead of a run that
  crashes when the flow is called;
- the on-demand deployment's ``source`` required, with no default;
- the automations that end a run whose process died: Crashed once its heartbeats
  stop, Cancelled once a Cancel finds nobody to carry it out
  (:func:`register_crash_automation`); the runs themselves must send heartbeats
  (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``: set by the serving process, and by
  ``prefect.yaml``'s job variables for workers).

Deployments may import flows and flows import tasks, never the other way; this
module imports neither.
"""

from __future__ import annotations

import os
from typing import Any

HEARTBEAT_SECONDS = "30"  # Prefect's minimum; its default is 180
HEARTBEAT_GRACE_SECONDS = 90.0
CRASH_AUTOMATION = "gobuild: mark builds whose heartbeats stopped as Crashed"
CANCEL_AUTOMATION = "gobuild: end cancelled builds whose process is gone"
FLOW_NAME = "multistage-build"
DEPLOYMENT_NAMES = ("nightly", "on-demand", "on-push")
# Parameters a deployment's runs must give (their default is dropped): an
# on-demand run must name its source (the flow's default ".", the running
# process's directory, is never what a user clicking "Quick run" means).
REQUIRED_PARAMETERS: dict[str, tuple[str, ...]] = {"on-demand": ("source",)}
# A run that reached any of these states has ended; only heartbeats that stop
# without one of them mean a dead process ("Cancelling" is not here: cancelling a
# dead run must end it too, see cancel_automation).
FINAL_EVENTS = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}


class SetupError(ValueError):
    """A setting that makes no sense; reported as one line."""


def heartbeat_grace_seconds() -> float:
    """``GOBUILD_HEARTBEAT_GRACE_SECONDS`` (default 90): how long a run may send no
    heartbeat before the automation marks it Crashed."""
    raw = os.environ.get("GOBUILD_HEARTBEAT_GRACE_SECONDS", str(HEARTBEAT_GRACE_SECONDS))
    try:
        grace = float(raw)
    except ValueError:
        raise SetupError("GOBUILD_HEARTBEAT_GRACE_SECONDS must be a number") from None
    if grace <= 0:
        raise SetupError("GOBUILD_HEARTBEAT_GRACE_SECONDS must be positive")
    return grace


def closed_schema(schema: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A copy of a deployment's parameter schema with ``additionalProperties: false``,
    so that the server refuses unknown (misspelled) parameter names with 409 when
    a run is created; ``required`` parameters lose their default and are listed
    as required."""
    closed = {**schema, "properties": {k: dict(v) for k, v in schema.get("properties", {}).items()}}
    for name in required:
        closed["properties"].get(name, {}).pop("default", None)
    closed["required"] = sorted({*schema.get("required", []), *required})
    closed["additionalProperties"] = False
    return closed


def silent_after(event: str, grace_seconds: float) -> Any:
    """A proactive trigger, one per run of this flow: ``event`` came, then neither a
    heartbeat nor a final state within ``grace_seconds``, so no process is left
    to run it (Prefect's recipe for zombie runs)."""
    from datetime import timedelta

    from prefect.events.schemas.automations import EventTrigger, Posture

    return EventTrigger(
        after={event},
        expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=grace_seconds),
    )


def crash_automation(grace_seconds: float) -> Any:
    """The automation that ends runs whose process died: a proactive trigger on the
    absence of heartbeats (Prefect's recipe for zombie runs), limited to this
    flow's runs, one per run."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore

    return AutomationCore(
        name=CRASH_AUTOMATION,
        description=(
            "A multistage-build run that sent no heartbeat for "
            f"{grace_seconds:g} s, and did not end, lost its process: mark it Crashed."
        ),
        trigger=silent_after("prefect.flow-run.heartbeat", grace_seconds),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"no heartbeat for {grace_seconds:g} s: the process running this build "
                    "died; run it again to resume from its cached stages"
                ),
            )
        ],
    )


def cancel_automation(grace_seconds: float) -> Any:
    """The automation that ends a Cancel nobody carries out: a run cancelled after
    its process died sits in Cancelling, and the crash automation cannot help, as
    Prefect only lets a Cancelling run become Cancelled
    (``EnforceCancellingToCancelledTransition``); its own cleanup waits 300 s. A
    live run keeps sending heartbeats until its runner ends it, so this fires only
    when nothing came after the Cancel."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore

    return AutomationCore(
        name=CANCEL_AUTOMATION,
        description=(
            "A multistage-build run cancelled while its process was gone (no heartbeat "
            f"for {grace_seconds:g} s after the Cancel): mark it Cancelled."
        ),
        trigger=silent_after("prefect.flow-run.Cancelling", grace_seconds),
        actions=[
            ChangeFlowRunState(
                state=StateType.CANCELLED,
                message=(
                    f"cancelled; no heartbeat for {grace_seconds:g} s after the Cancel, so the "
                    "process running this build was already gone"
                ),
            )
        ],
    )


def _canonical(automation: Any) -> str:
    """What an automation does, comparable between a registered one and a new one:
    without ids, with its sets of event names in a fixed order."""
    import json

    def ordered(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ordered(v) for k, v in value.items() if k != "id"}
        if isinstance(value, list):
            items = [ordered(v) for v in value]
            return sorted(items) if all(isinstance(v, str) for v in items) else items
        return value

    fields = {"name", "description", "enabled", "trigger", "actions"}
    fields |= {"actions_on_trigger", "actions_on_resolve"}
    return json.dumps(ordered(automation.model_dump(mode="json", include=fields)), sort_keys=True)


async def register_crash_automation(grace_seconds: float) -> None:
    """Make sure the automations that end dead runs (crash and cancel) exist as
    defined here: one of each name, whoever registered them last (a serving
    process or ``deployments.setup``) setting their grace period.

    One that is already as defined is left alone: replacing it would drop the runs
    it is timing (a serving process restarted right after a crash would otherwise
    reset every pending dead-run check)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for automation in (crash_automation(grace_seconds), cancel_automation(grace_seconds)):
            existing = await client.read_automations_by_name(automation.name)
            if len(existing) == 1 and _canonical(existing[0]) == _canonical(automation):
                continue
            for old in existing:
                await client.delete_automation(old.id)
            await client.create_automation(automation)
