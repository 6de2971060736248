"""A build whose processes die ends, and its engine slot comes back.

The serving process and its flow-run subprocess are killed mid-compile. The
run stops sending heartbeats; the automation ``deployments.serve`` registers
marks it Crashed, and the slot of the engine limit, a lease nobody renews any
more, is taken back by the server.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from deployments.serve import CRASH_AUTOMATION
from tests.server_fixtures import (
    ROOT,
    EngineProcess,
    PrefectServer,
    start_proc,
    wait_for,
)

LIMIT = "gobuild-dead-run-test"
GRACE_SECONDS = 40


def state_of(server: PrefectServer, run_id: str) -> str:
    with server.client() as api:
        return api.get(f"/flow_runs/{run_id}").json()["state"]["type"]


def slots_in_use(server: PrefectServer) -> int:
    with server.client() as api:
        r = api.get(f"/v2/concurrency_limits/{LIMIT}")
        return r.json()["active_slots"] if r.status_code == 200 else 0


def test_killed_build_is_marked_crashed_and_its_slot_returns(
    prefect_server: PrefectServer,
    engine_process: EngineProcess,
    hello_go: Path,
    tmp_path: Path,
) -> None:
    app = tmp_path / "slow-app"
    app.mkdir()
    for f in hello_go.iterdir():
        if f.is_file():
            (app / f.name).write_bytes(f.read_bytes())
    # A test that outlives the serving process: the run is in its compile stage.
    (app / "slow_test.go").write_text(
        'package main\n\nimport (\n\t"testing"\n\t"time"\n)\n\n'
        "func TestSlow(t *testing.T) { time.Sleep(150 * time.Second) }\n"
    )
    env = {
        **prefect_server.env(),
        **engine_process.env,
        "GOBUILD_NIGHTLY_SOURCE": str(hello_go),
        "GOBUILD_HEARTBEAT_GRACE_SECONDS": str(GRACE_SECONDS),
        "GOBUILD_ENGINE_LIMIT": LIMIT,
        "GOBUILD_ENGINE_CONCURRENCY": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    proc = start_proc(
        "deployments.serve (to be killed)",
        [sys.executable, "-m", "deployments.serve"],
        env=env,
        cwd=ROOT,
        log=tmp_path / "serve.log",
    )
    try:

        def deployment_id() -> str | None:
            if "Your deployments are being served" not in proc.log.read_text(errors="replace"):
                return None
            with prefect_server.client() as api:
                r = api.get("/deployments/name/multistage-build/on-demand")
                return r.json()["id"] if r.status_code == 200 else None

        dep = wait_for("the served deployments", deployment_id, timeout=120, procs=[proc])
        with prefect_server.client() as api:
            names = [a["name"] for a in api.post("/automations/filter", json={}).json()]
            assert names.count(CRASH_AUTOMATION) == 1
            r = api.post(
                f"/deployments/{dep}/create_flow_run",
                json={"parameters": {"source": str(app), "output": str(tmp_path / "s.tar")}},
            )
            assert r.status_code == 201, r.text
            run_id = r.json()["id"]
        wait_for(
            "the build to hold the engine slot",
            lambda: state_of(prefect_server, run_id) == "RUNNING"
            and slots_in_use(prefect_server) == 1,
            timeout=180,
            procs=[proc],
        )
        time.sleep(5)  # into the compile stage, with its first heartbeat sent
    finally:
        proc.stop(signals=(signal.SIGKILL,), grace=5)  # the serving process and its child
    killed = time.monotonic()

    wait_for(
        "the dead run to be marked Crashed",
        lambda: state_of(prefect_server, run_id) == "CRASHED",
        timeout=150,
        interval=2,
    )
    crashed_after = time.monotonic() - killed
    assert crashed_after < 120, f"marked Crashed {crashed_after:.0f} s after the kill"
    wait_for(
        "the engine slot to come back",
        lambda: slots_in_use(prefect_server) == 0,
        timeout=120,
        interval=2,
    )
    with prefect_server.client() as api:
        message = api.get(f"/flow_runs/{run_id}").json()["state"]["message"]
    assert "no heartbeat" in message

