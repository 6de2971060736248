"""Running the flow in a test, and reading back what a user would look at.

Shared by the flow's tests: the run's final state, its task runs and artifacts
through the Prefect API, and its events (sent asynchronously).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.events.filters import EventFilter, EventNameFilter

from flows.build import multistage_build


def build(**params: Any):
    """Run the flow in this process; returns its final state."""
    return asyncio.run(multistage_build(**params, return_state=True))


def task_runs(flow_run_id, timeout: float = 30.0) -> list:
    """The run's task runs, once each has a final state: the server records task
    runs from their events, asynchronously, so a read right after the flow ended
    can find the last one without its state yet."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        if all(r.state is not None and r.state.is_final() for r in runs):
            return runs
        if time.monotonic() > deadline:
            return runs
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
