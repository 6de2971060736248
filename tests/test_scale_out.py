"""Scale-out on Prefect's own engine, as the README's production section runs it.

One Prefect server on PostgreSQL (Debian's ``postgresql``, started here on
127.0.0.1: ``tests/postgres_fixtures.py``), the ``prefect.yaml`` deployments made
by ``prefect deploy --all`` and finished by ``python -m deployments.setup``, and
two process workers on the one work pool. The workers share nothing but the
server: each has its own PREFECT_HOME and local result path, as two machines
would, and the cache is shared only through the result storage both are pointed
at (``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``), a ``LocalFileSystem`` block on a
shared folder. Each flow run reaches the Dagger test engine the way a worker
reaches a remote engine through the Dagger CLI: ``_EXPERIMENTAL_DAGGER_CLI_BIN``
starts a session of its own, so the engine's request log tells each run's engine
work apart.

What must hold, and could fail:

- the worker deployments refuse misspelled and missing parameters (409) and the
  crash automation exists, as for served deployments;
- a build completed by worker A is served from the shared cache by worker B (its
  stages Cached, no engine session at all);
- 20 simultaneous REST triggers: every one creates exactly one run (503s are
  retried, and counted), all 20 complete, both workers run some, and the engine
  never has more sessions open at once than the ``gobuild-engine`` limit, while
  more runs than that were running: the limit, not the workers, made them queue.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import api_creates
from bench.api_creates import create_simultaneously
from deployments.common import CRASH_AUTOMATION
from tests import postgres_fixtures
from tests.flowruns import api_task_runs
from tests.oci_check import inspect_config
from tests.postgres_fixtures import Postgres
from tests.server_fixtures import (
    PREFECT,
    ROOT,
    EngineProcess,
    PrefectServer,
    Proc,
    clean_env,
    start_proc,
    wait_for,
)

# The module's fixtures (module-scoped): a PostgreSQL cluster, a server on it.
postgres = postgres_fixtures.postgres
postgres_prefect_server = postgres_fixtures.postgres_prefect_server

FLOW = "multistage-build"
POOL = "gobuild-process"
ENGINE_LIMIT = 2  # GOBUILD_ENGINE_CONCURRENCY of the workers
WORKER_LIMIT = 5  # flow runs per worker: together well above the engine limit
TRIGGERS = 20
GRACE_SECONDS = 120  # GOBUILD_HEARTBEAT_GRACE_SECONDS given to deployments.setup
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
IN_FLIGHT = {"PENDING", "RUNNING", "CANCELLING"}
BUILD_TIMEOUT = 300.0  # a cold Go compile in the test engine takes up to a minute
TRIGGERS_TIMEOUT = 900.0  # 20 builds, each a new Python process, on 2 cores
SUBMITTED = re.compile(r"submitting flow run '([0-9a-f-]{36})'")
# Two workers may both pick a run up; the server lets one of them move it to
# Pending, and the other one's submission is aborted.
ABORTED = re.compile(r"Aborted submission of flow run '([0-9a-f-]{36})'")


@dataclass
class ScaleOut:
    server: PrefectServer
    postgres: Postgres
    engine: EngineProcess
    workers: dict[str, Proc]  # "a", "b": each also polls its own queue "worker-<name>"
    deployment_ids: dict[str, str]
    source: Path  # a copy of examples/hello-go
    shared_results: Path  # the LocalFileSystem block's folder
    local_results: dict[str, Path]  # each worker's own local result path
    setup_output: str
    work: Path

    def procs(self) -> list[Proc]:
        return [*self.workers.values(), self.server.proc, self.postgres.proc]

    def ran(self, worker: str) -> set[str]:
        """Ids of the flow runs this worker started (its log says so)."""
        log = self.workers[worker].log.read_text(errors="replace")
        return set(SUBMITTED.findall(log)) - set(ABORTED.findall(log))


def run_cli(server: PrefectServer, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """A command against the server, as an operator types it; fails the test if it does."""
    proc = subprocess.run(
        list(args),
        cwd=cwd,
        env={**server.env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"{args}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc.stdout


def dagger_cli(engine: EngineProcess, base: Path) -> Path:
    """A stand-in for the ``dagger`` CLI (``tests/dagger_test_engine/cli.py``) that
    adds a session to the engine process for each ``dagger session`` the SDK runs,
    as the real CLI does for a remote engine (``_EXPERIMENTAL_DAGGER_RUNNER_HOST``)."""
    token = base / "engine-admin-token"
    token.write_text(engine.token)  # the engine's first session token is its admin token
    token.chmod(0o600)
    script = base / "dagger"
    script.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f"exec {shlex.quote(sys.executable)} -m tests.dagger_test_engine.cli"
        f" --engine http://127.0.0.1:{engine.port}"
        f' --admin-token-file {shlex.quote(str(token))} "$@"\n'
    )
    script.chmod(0o755)
    return script


@pytest.fixture(scope="module")
def scale_out(
    postgres: Postgres,
    postgres_prefect_server: PrefectServer,
    engine_process: EngineProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ScaleOut]:
    server = postgres_prefect_server
    work = tmp_path_factory.mktemp("scale-out")
    source = work / "hello-go"
    shutil.copytree(ROOT / "examples" / "hello-go", source)

    # The operator's steps (README, "Running in production").
    run_cli(server, PREFECT, "work-pool", "create", POOL, "--type", "process", cwd=work)
    for name in ("a", "b"):
        run_cli(server, PREFECT, "work-queue", "create", f"worker-{name}", "--pool", POOL, cwd=work)
    # GOBUILD_PROJECT_DIR stays unset here, so each worker resolves it (see prefect.yaml).
    run_cli(server, PREFECT, "--no-prompt", "deploy", "--all", cwd=ROOT)
    setup_output = run_cli(
        server,
        sys.executable,
        "-m",
        "deployments.setup",
        cwd=work,
        env={"GOBUILD_HEARTBEAT_GRACE_SECONDS": str(GRACE_SECONDS)},
    )
    shared = work / "shared-results"
    shared.mkdir()
    run_cli(
        server,
        sys.executable,
        "-c",
        "import sys; from prefect.filesystems import LocalFileSystem; "
        "LocalFileSystem(basepath=sys.argv[1]).save('gobuild-results')",
        str(shared),
        cwd=work,
    )

    with httpx.Client(base_url=server.url, timeout=30) as api:
        ids = {
            n: api.get(f"/deployments/name/{FLOW}/{n}").json()["id"]
            for n in ("nightly", "on-demand", "on-push")
        }
        # The nightly schedule paused: a run at 02:00 must not join a measurement.
        api.post(f"/deployments/{ids['nightly']}/pause_deployment").raise_for_status()
    cli_bin = dagger_cli(engine_process, work)
    workers: dict[str, Proc] = {}
    local_results: dict[str, Path] = {}
    try:
        for name in ("a", "b"):
            (work / f"worker-{name}").mkdir()
            local_results[name] = work / f"worker-{name}" / "local-results"
            env = {
                **server.env(),
                # Two machines: nothing shared but the server (and the result block).
                "PREFECT_HOME": str(work / f"worker-{name}" / "home"),
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(local_results[name]),
                # ... and one result store: the block on the shared folder.
                "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "local-file-system/gobuild-results",
                "_EXPERIMENTAL_DAGGER_CLI_BIN": str(cli_bin),
                "GOBUILD_PROJECT_DIR": str(ROOT),
                "GOBUILD_ENGINE_CONCURRENCY": str(ENGINE_LIMIT),
                "GOBUILD_RETRY_BASE_SECONDS": "0.2",
                "PREFECT_WORKER_QUERY_SECONDS": "1",
            }
            workers[name] = start_proc(
                f"worker {name}",
                [
                    PREFECT, "worker", "start", "--pool", POOL, "--name", f"worker-{name}",
                    "--work-queue", "default", "--work-queue", f"worker-{name}",
                    "--limit", str(WORKER_LIMIT),
                ],
                env=env,
                cwd=work / f"worker-{name}",
                log=work / f"worker-{name}.log",
            )  # fmt: skip
        for proc in workers.values():

            def polling(proc: Proc = proc) -> bool:
                return "started!" in proc.log.read_text(errors="replace")

            wait_for(f"{proc.name} to start", polling, timeout=120, procs=[proc])
        yield ScaleOut(
            server=server,
            postgres=postgres,
            engine=engine_process,
            workers=workers,
            deployment_ids=ids,
            source=source,
            shared_results=shared,
            local_results=local_results,
            setup_output=setup_output,
            work=work,
        )
    finally:
        for proc in workers.values():
            # A worker may ignore SIGTERM; a second SIGINT makes it stop.
            proc.stop(signals=(signal.SIGINT, signal.SIGINT), grace=10)


# --- helpers: the REST API --------------------------------------------------------


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def state(run: dict) -> str:
    return (run.get("state") or {}).get("type", "")


def flow_runs(api: httpx.Client, **flow_run_filter: Any) -> list[dict]:
    r = api.post("/flow_runs/filter", json={"flow_runs": flow_run_filter, "limit": 200})
    r.raise_for_status()
    return r.json()


def wait_final(so: ScaleOut, ids: Sequence[str], timeout: float) -> list[dict]:
    """Wait until every run ended; fail with the logs unless all Completed."""

    def done() -> list[dict] | None:
        with so.server.client() as api:
            runs = flow_runs(api, id={"any_": list(ids)})
        return runs if len(runs) == len(ids) and all(state(r) in FINAL for r in runs) else None

    runs = wait_for(f"{len(ids)} run(s) to finish", done, timeout=timeout, procs=so.procs())
    bad = [(r["name"], r["state"]) for r in runs if state(r) != "COMPLETED"]
    if bad:
        pytest.fail(f"runs not completed: {bad}\n" + "\n".join(p.tail() for p in so.procs()))
    return runs


def wait_idle(so: ScaleOut) -> None:
    def idle() -> bool:
        with so.server.client() as api:
            return not flow_runs(api, state={"type": {"any_": sorted(IN_FLIGHT)}})

    wait_for("no flow run in flight", idle, timeout=120, procs=so.procs())


def report(api: httpx.Client, run_id: str) -> str:
    r = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    r.raise_for_status()
    [art] = [a for a in r.json() if a.get("key") == "build-hello-go"]
    return art["data"]


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Most intervals open at one instant; an end and a start at the same time don't overlap."""
    spans = list(intervals)  # may be a generator: read it once
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = current = 0
    for _, delta in events:
        current += delta
        most = max(most, current)
    return most


def session_spans(requests: list[dict], skip: set[str]) -> dict[str, tuple[float, float]]:
    """First to last engine request of each session not in ``skip``: the span in which
    that session's engine work happened."""
    spans: dict[str, tuple[float, float]] = {}
    for r in requests:
        if r["session"] in skip:
            continue
        lo, hi = spans.get(r["session"], (r["time"], r["time"]))
        spans[r["session"]] = (min(lo, r["time"]), max(hi, r["time"]))
    return spans


def build_params(so: ScaleOut, version: str, output: Path) -> dict[str, Any]:
    """Cheap builds: no vet/test gate, the default (this host's) platform only."""
    return {"source": str(so.source), "output": str(output), "version": version,
            "run_checks": False}  # fmt: skip


def result_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --- the tests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "error: PREFECT_API_URL is not set: point it at your Prefect server"),
        (
            {"PREFECT_API_URL": "http://127.0.0.1:9/api", "GOBUILD_HEARTBEAT_GRACE_SECONDS": "x"},
            "error: GOBUILD_HEARTBEAT_GRACE_SECONDS must be a number",
        ),
    ],
    ids=["no-api-url", "bad-grace"],
)
def test_setup_refuses_bad_settings_in_one_line(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    """Without an API URL the client would set up a temporary in-process server;
    a bad grace period is refused before anything is changed on the server."""
    proc = subprocess.run(
        [sys.executable, "-m", "deployments.setup"],
        cwd=tmp_path,
        env={**clean_env(), "PREFECT_HOME": str(tmp_path / "home"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == message


def test_setup_closes_worker_deployments_and_registers_the_crash_automation(
    scale_out: ScaleOut,
) -> None:
    so = scale_out
    assert "unknown parameter names refused; source required" in so.setup_output
    dep = so.deployment_ids["on-demand"]
    with so.server.client() as api:
        before = len(flow_runs(api, deployment_id={"any_": [dep]}))
        for parameters, field in (
            ({"source": str(so.source), "platfroms": ["linux/amd64"]}, "platfroms"),
            ({"source": str(so.source), "run_checks": "maybe"}, "run_checks"),
            ({"version": "1.0.0"}, "source"),  # on-demand runs must name their source
        ):
            r = api.post(f"/deployments/{dep}/create_flow_run", json={"parameters": parameters})
            assert r.status_code == 409, r.text
            assert field in r.json()["detail"]
        assert len(flow_runs(api, deployment_id={"any_": [dep]})) == before  # none created
        for name, dep_id in so.deployment_ids.items():
            deployment = api.get(f"/deployments/{dep_id}").json()
            assert deployment["work_pool_name"] == POOL, name
            assert deployment["parameter_openapi_schema"]["additionalProperties"] is False, name
            # prefect.yaml's job variables: workers give each run 30 s heartbeats.
            env = deployment["job_variables"]["env"]
            assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30", name
        automations = api.post("/automations/filter", json={}).json()
    [crash] = [a for a in automations if a["name"] == CRASH_AUTOMATION]
    assert crash["enabled"]
    assert crash["trigger"]["posture"] == "Proactive"
    assert crash["trigger"]["within"] == GRACE_SECONDS
    assert crash["actions"][0]["state"] == "CRASHED"


def test_build_cached_by_one_worker_is_served_from_cache_by_the_other(
    scale_out: ScaleOut,
) -> None:
    so = scale_out
    wait_idle(so)
    params = build_params(so, "8.0.0", so.work / "pair" / "hello-go.oci.tar")
    dep = so.deployment_ids["on-demand"]
    with so.server.client() as api:
        first = api.post(
            f"/deployments/{dep}/create_flow_run",
            json={"parameters": params, "work_queue_name": "worker-a"},
        )
        assert first.status_code == 201, first.text
    [done_a] = wait_final(so, [first.json()["id"]], BUILD_TIMEOUT)
    assert done_a["id"] in so.ran("a") and done_a["id"] not in so.ran("b")
    # The run sent heartbeats (prefect.yaml's job variables reached its process;
    # Prefect sends none by default), which the crash automation watches.
    assert wait_for(
        "a heartbeat event of the worker's run",
        lambda: so.server.heartbeats(done_a["id"]),
        timeout=60,
        procs=so.procs(),
    )
    # Results went to the shared block's folder, none to either worker's own store.
    assert result_files(so.shared_results)
    for name, local in so.local_results.items():
        assert result_files(local) == [], name
    requests_before = len(so.engine.log()["requests"])

    with so.server.client() as api:
        second = api.post(
            f"/deployments/{dep}/create_flow_run",
            json={"parameters": params, "work_queue_name": "worker-b"},
        )
        assert second.status_code == 201, second.text
    [done_b] = wait_final(so, [second.json()["id"]], BUILD_TIMEOUT)
    assert done_b["id"] in so.ran("b") and done_b["id"] not in so.ran("a")
    with so.server.client() as api:
        tasks = {
            t["name"].rsplit("-", 1)[0]: t
            for t in api_task_runs(api, [done_b["id"]], names=("compile ", "assemble runtime"))
        }
        data = report(api, done_b["id"])
    cached = {name: t["state"]["name"] for name, t in tasks.items()}
    assert cached.get("assemble runtime") == "Cached", cached
    assert [s for n, s in cached.items() if n.startswith("compile ")] == ["Cached"], cached
    # The run's report says so too: both engine stages were cache hits.
    stages = dict(re.findall(r"^\| ([^|]+?) \| [0-9.]+ s \| (hit|miss) \|$", data, re.M))
    assert stages.get("assemble runtime") == "hit", data
    assert [v for k, v in stages.items() if k.startswith("compile ")] == ["hit"], data
    # Served from the cache: worker B's run did not even open an engine session.
    assert len(so.engine.log()["requests"]) == requests_before


def test_twenty_simultaneous_triggers_on_two_workers_none_lost_engine_limit_held(
    scale_out: ScaleOut,
) -> None:
    so = scale_out
    wait_idle(so)
    log = so.engine.log()
    sessions_before = {r["session"] for r in log["requests"]}
    builds_before = sum(e[:2] == ["go", "build"] for e in log["execs"])
    output = so.work / "twenty" / "hello-go.oci.tar"  # one app, one output path
    bodies = [
        {"parameters": build_params(so, f"9.0.{i}", output), "idempotency_key": f"twenty-{i}"}
        for i in range(TRIGGERS)
    ]
    started = time.monotonic()
    created = create_simultaneously(so.server.url, so.deployment_ids["on-demand"], bodies)
    first_503 = sum(c.statuses[0] == 503 for c in created)
    all_503 = sum(c.statuses.count(503) for c in created)
    print(f"PostgreSQL: {first_503} of {TRIGGERS} simultaneous creates answered 503 first, "
          f"{all_503} 503s in all")  # fmt: skip
    assert all(c.ok for c in created), [c.statuses for c in created]
    ids = [c.run["id"] for c in created if c.run]
    assert len(set(ids)) == TRIGGERS  # one run per trigger: none lost, none doubled
    runs = wait_final(so, ids, TRIGGERS_TIMEOUT)
    elapsed = time.monotonic() - started
    with so.server.client() as api:
        ours = [
            r
            for r in flow_runs(api, deployment_id={"any_": [so.deployment_ids["on-demand"]]})
            if r["parameters"].get("output") == str(output)
        ]
        tarballs = {}
        for run in runs:
            found = re.search(r"- OCI tarball: `([^`]+)`", report(api, run["id"]))
            assert found, run["name"]
            tarballs[run["parameters"]["version"]] = found[1]
    assert len(ours) == TRIGGERS  # retried creates made no extra runs

    # Both workers ran builds, and no run was run by both.
    a, b = so.ran("a") & set(ids), so.ran("b") & set(ids)
    assert a and b and not a & b and a | b == set(ids), (len(a), len(b))
    # Each a real build, each output its own image (no build lost another's output).
    log = so.engine.log()
    assert sum(e[:2] == ["go", "build"] for e in log["execs"]) - builds_before == TRIGGERS
    assert len(set(tarballs.values())) == TRIGGERS
    for version, tarball in tarballs.items():
        labels = inspect_config(f"oci-archive:{tarball}")["config"]["Labels"]
        assert labels["org.opencontainers.image.version"] == version

    # Engine work never exceeded the limit, though more runs than that were running.
    spans = session_spans(log["requests"], skip=sessions_before)
    engine_overlap = max_overlap(spans.values())
    run_overlap = max_overlap((ts(r["start_time"]), ts(r["end_time"])) for r in runs)
    with so.server.client() as api:
        limit = api.get("/v2/concurrency_limits/gobuild-engine").json()
    detail = {
        "sessions": len(spans),
        "engine_overlap": engine_overlap,
        "run_overlap": run_overlap,
        "runs_per_worker": (len(a), len(b)),
        "503_first_attempt": first_503,
        "seconds": round(elapsed, 1),
    }
    print(f"scale-out measurement: {json.dumps(detail)}")  # shown with -s / on failure
    assert limit["limit"] == ENGINE_LIMIT
    assert len(spans) >= TRIGGERS, detail
    assert engine_overlap <= ENGINE_LIMIT, detail
    assert run_overlap > ENGINE_LIMIT, detail


def test_api_creates_bench_measures_a_round_against_the_server(
    postgres_prefect_server: PrefectServer,
) -> None:
    """``python -m bench.api_creates`` is run by hand; this keeps its measuring and
    its table working (on this module's PostgreSQL server, one small round)."""
    measured = api_creates.measure("PostgreSQL", postgres_prefect_server.url, n=3, rounds=1)
    assert measured.requests == 3 and measured.created == 3 and not measured.failed
    assert measured.attempts >= 3 and measured.most_attempts >= 1
    lines = api_creates.table([measured]).splitlines()
    assert lines[0] == "| measure | PostgreSQL |"
    assert "| runs created (none lost) | 3 of 3 |" in lines
