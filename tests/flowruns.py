"""Running the flow in a test, and reading back what a user would look at.

Shared by the flow's tests: the run's final state, its task runs and artifacts
through the Prefect API, and its events (sent asynchronously).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.events.filters import EventFilter, EventNameFilter

from flows.build import multistage_build

T = TypeVar("T")


def build(**params: Any):
    """Run the flow in this process; returns its final state."""
    return asyncio.run(multistage_build(**params, return_state=True))


def task_runs(flow_run_id, timeout: float = 30.0, names: Collection[str] = ()) -> list:
    """The run's task runs, read through the Python client once settled (see
    ``settled``)."""

    def read() -> list:
        with get_client(sync_client=True) as client:
            return client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return settled(read, lambda r: (r.id, r.name, r.state and r.state.is_final()), timeout, names)


def api_task_runs(
    api: httpx.Client,
    flow_run_ids: Iterable[str],
    names: Collection[str] = (),
    timeout: float = 30.0,
) -> list[dict]:
    """The runs' task runs as the REST API returns them, once settled (see ``settled``)."""
    body = {"flow_runs": {"id": {"any_": list(flow_run_ids)}}, "limit": 200}

    def read() -> list[dict]:
        r = api.post("/task_runs/filter", json=body)
        r.raise_for_status()
        return r.json()

    def facts(run: dict) -> tuple:
        state = run.get("state") or {}
        return run["id"], run["name"], state.get("type") in FINAL_STATE_TYPES

    return settled(read, facts, timeout, names)


FINAL_STATE_TYPES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def settled(
    read: Callable[[], list[T]],
    facts: Callable[[T], tuple[Any, str, bool]],
    timeout: float,
    names: Collection[str],
) -> list[T]:
    """Task runs once each is recorded with a final state. The server records task
    runs from their events, asynchronously and not always in order, so a read right
    after the flow ended can miss one (a later stage recorded before an earlier one)
    or find one without its final state yet. ``names`` are the prefixes of task runs
    the caller knows ran; without them, the same runs read twice in a row, all
    final, count as all of them. ``facts`` gives a run's (id, name, is final)."""
    deadline = time.monotonic() + timeout
    seen: set | None = None
    while True:
        runs = read()
        known = [facts(r) for r in runs]
        ids = {run_id for run_id, _, _ in known}
        done = all(final for _, _, final in known) and all(
            any(name.startswith(prefix) for _, name, _ in known) for prefix in names
        )
        if (done and (names or ids == seen)) or time.monotonic() > deadline:
            return runs
        seen = ids if done else None
        time.sleep(0.2)


def artifacts(flow_run_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


FINAL_PROGRESS = ("build: finished", "build: failed")  # tasks/progress.py, a run's last line


def run_logs(flow_run_id, timeout: float = 30.0) -> list[str]:
    """The run's log messages in the API, in order, once its last progress line
    (``build: finished``/``build: failed``) is there: logs reach the API in
    batches, asynchronously, so an early read could miss the end of the story."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    deadline = time.monotonic() + timeout
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    while True:
        messages: list[str] = []
        with get_client(sync_client=True) as client:
            while True:  # the API answers in pages
                page = client.read_logs(
                    log_filter=log_filter,
                    limit=200,
                    offset=len(messages),
                    sort=LogSort.TIMESTAMP_ASC,
                )
                messages += [entry.message for entry in page]
                if len(page) < 200:
                    break
        if any(m.startswith(FINAL_PROGRESS) for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def events(name: str, payload: dict[str, Any], timeout: float = 30.0) -> list:
    """The events called ``name`` whose payload has the items of ``payload``.

    Events are sent asynchronously, and earlier tests sent events of the same
    name, so wait until one of ours arrived."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(event=EventNameFilter(name=[name])), limit=50
            )
        ours = [e for e in page.events if payload.items() <= dict(e.payload).items()]
        if ours or time.monotonic() > deadline:
            return ours
        time.sleep(0.5)
