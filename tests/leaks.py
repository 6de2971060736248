"""Searching everywhere a secret could end up after a run: it must be nowhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import FINAL_PROGRESS, run_logs
from tests.prefect_fixtures import PrefectAPI


def assert_not_leaked(
    secret: str,
    state: Any,
    prefect_api: PrefectAPI,
    engine: TestEngine,
    capfd: pytest.CaptureFixture[str],
    **more: str,
) -> None:
    """Prefect's database, the run's logs, every artifact, the result store, the
    engine's query log, the process output, the final state (and ``more``)."""
    # Every log line of the run, its progress lines (tasks/progress.py: commands,
    # source, cache decisions, digests, pushes) up to the last one included; read
    # first, so that the database below holds them too.
    logs = run_logs(state.state_details.flow_run_id)
    assert logs, "expected the run's logs in the API"
    assert any(m.startswith(FINAL_PROGRESS) for m in logs), "expected the run's last progress line"
    db_url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    db_file = Path(db_url.split("///", 1)[1])
    assert db_file.exists()
    haystacks = {"database": b"".join(p.read_bytes() for p in db_file.parent.glob("*.db*"))}
    with get_client(sync_client=True) as client:
        all_artifacts = client.read_artifacts()
    haystacks["logs"] = "\n".join(logs).encode()
    haystacks["artifacts"] = "\n".join(
        str(a.data) + str(a.description) for a in all_artifacts
    ).encode()
    haystacks["results"] = b"".join(
        p.read_bytes() for p in prefect_api.results.rglob("*") if p.is_file()
    )
    haystacks["engine log"] = str(engine.log.snapshot()).encode()
    captured = capfd.readouterr()
    haystacks["output"] = (captured.out + captured.err).encode()
    outcome = state.result(raise_on_failure=False)
    haystacks["flow state"] = str(state).encode() + repr(outcome).encode()
    haystacks.update({name: text.encode() for name, text in more.items()})
    for name, data in haystacks.items():
        assert secret.encode() not in data, f"secret found in {name}"
