"""Schedules and triggers, proven against a real ``prefect server start``.

The deployments are served by ``python -m deployments.serve`` in a background process
pointed at a standalone Dagger test engine (``tests/server_fixtures.py``); each test
starts runs the way a user would (the CLI, the REST API, an event, a schedule, a
worker) and reads back what the server recorded, never the flow's return value.

Module layout: fast checks of the configuration first, then the served deployments'
shape, then builds (the first is a cold Go compile), and last the worker test, which
stops the serving process because it redeploys the same deployment names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.config import ConfigError, load_nightly_config
from tasks.goenv import default_platform
from tests.flowruns import api_task_runs
from tests.git_servers import GitDaemon
from tests.oci_check import extract_file, inspect_config
from tests.registry_fixtures import Registry
from tests.server_fixtures import (
    PREFECT,
    ROOT,
    TEST_INTERVAL_SECONDS,
    EngineProcess,
    PrefectServer,
    Proc,
    Served,
    start_proc,
    wait_for,
)

FLOW = "multistage-build"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
IN_FLIGHT = {"PENDING", "RUNNING", "CANCELLING"}
BUILD_TIMEOUT = 300.0  # a cold Go compile in the test engine takes up to a minute


# --- helpers: the REST API, as a curl user would call it ---------------------------


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def create_run(api: httpx.Client, deployment_id: str, parameters: dict[str, Any]) -> dict:
    r = api.post(f"/deployments/{deployment_id}/create_flow_run", json={"parameters": parameters})
    assert r.status_code == 201, r.text
    return r.json()


def flow_runs(api: httpx.Client, **flow_run_filter: Any) -> list[dict]:
    r = api.post("/flow_runs/filter", json={"flow_runs": flow_run_filter, "limit": 200})
    r.raise_for_status()
    return r.json()


def runs_of(api: httpx.Client, deployment_id: str) -> list[dict]:
    return flow_runs(api, deployment_id={"any_": [deployment_id]})


def wait_final(
    server: PrefectServer, ids: Sequence[str], procs: Sequence[Proc], timeout: float = BUILD_TIMEOUT
) -> list[dict]:
    """Wait until every run is in a final state; fail with the logs unless all Completed."""

    def done() -> list[dict] | None:
        with server.client() as api:
            runs = flow_runs(api, id={"any_": list(ids)})
        return runs if len(runs) == len(ids) and all(_state(r) in FINAL for r in runs) else None

    runs = wait_for(f"{len(ids)} flow run(s) to finish", done, timeout=timeout, procs=procs)
    bad = [r for r in runs if _state(r) != "COMPLETED"]
    if bad:
        logs = "\n".join(p.tail() for p in procs)
        pytest.fail(f"runs not completed: {[(r['name'], r['state']) for r in bad]}\n{logs}")
    return runs


def wait_idle(server: PrefectServer, procs: Sequence[Proc], timeout: float = 120.0) -> None:
    """No run in flight anywhere, so that a measurement sees only its own runs."""

    def idle() -> bool:
        with server.client() as api:
            return not flow_runs(api, state={"type": {"any_": sorted(IN_FLIGHT)}})

    wait_for("no flow run in flight", idle, timeout=timeout, procs=procs)


def _state(run: dict) -> str:
    return (run.get("state") or {}).get("type", "")


def artifacts(api: httpx.Client, flow_run_id: str) -> dict[str, dict]:
    r = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    r.raise_for_status()
    return {a["key"]: a for a in r.json() if a.get("key")}


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Most intervals open at one instant; an end and a start at the same time don't overlap."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda e: (e[0], e[1]),
    )
    most = current = 0
    for _, delta in events:
        current += delta
        most = max(most, current)
    return most


def cli(
    server: PrefectServer, *args: str, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PREFECT, *args],
        cwd=cwd,
        env={**server.env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT + 60,
        check=False,
    )


def binary_version(tarball: Path, app: str, tmp: Path) -> str:
    """Run the image's binary (built for this host) with --version."""
    arch = default_platform().split("/")[1]
    binary = extract_file(f"oci-archive:{tarball}", f"/usr/local/bin/{app}", tmp, arch)
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


# --- configuration: fast, no server -------------------------------------------------


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_nightly_config_file_env_overrides_and_nightly_tag(tmp_path: Path) -> None:
    src = tmp_path / "svc"
    src.mkdir()
    (src / "go.mod").write_text("module example.com/svc\n\ngo 1.22\n")
    (src / "main.go").write_text("package main\n\nfunc main() {}\n")
    cfg = write_config(
        tmp_path / "n.toml",
        'timezone = "Asia/Tokyo"\n[parameters]\nsource = "svc"\noutput = "o/n.tar"\n',
    )
    config = load_nightly_config({"GOBUILD_NIGHTLY_CONFIG": str(cfg)})
    assert (config.cron, config.timezone) == ("0 2 * * *", "Asia/Tokyo")
    # Relative paths in the file are relative to the file, whatever the cwd.
    assert config.parameters == {"source": str(src), "output": str(tmp_path / "o" / "n.tar")}

    config = load_nightly_config(
        {
            "GOBUILD_NIGHTLY_CONFIG": str(cfg),
            "GOBUILD_NIGHTLY_TZ": "America/New_York",
            "GOBUILD_NIGHTLY_IMAGE_REFS": "reg.example/svc:edge, reg.example/svc:main",
        }
    )
    assert config.timezone == "America/New_York"
    assert config.parameters["image_refs"] == ["reg.example/svc:edge", "reg.example/svc:main"]
    assert config.parameters["tag_nightly"] is True  # publishing nightly means nightly tags
    assert config.origins["image_refs"] == "GOBUILD_NIGHTLY_IMAGE_REFS"

    # The shipped default config is valid as it is.
    default = load_nightly_config({})
    assert default.timezone == "UTC" and default.cron == "0 2 * * *"
    assert Path(default.parameters["source"]) == ROOT / "examples" / "hello-go"


BAD_CONFIGS = [
    ({"GOBUILD_NIGHTLY_TZ": "Mars/Olympus"}, "", "timezone (from GOBUILD_NIGHTLY_TZ)"),
    ({"GOBUILD_NIGHTLY_CRON": "0 25 * * *"}, "", "cron (from GOBUILD_NIGHTLY_CRON)"),
    ({"GOBUILD_NIGHTLY_SOURCE": "/nonexistent/svc"}, "", "source (from GOBUILD_NIGHTLY_SOURCE)"),
    (
        {"GOBUILD_NIGHTLY_IMAGE_REFS": "reg.example/App:1"},
        "",
        "image_refs (from GOBUILD_NIGHTLY_IMAGE_REFS)",
    ),
    ({}, 'timezon = "UTC"\n', "unknown key 'timezon'"),
    ({}, "[parameters]\nsource = '{src}'\nplatforms = ['linux/sparc']\n", "platforms (from "),
    ({}, "[parameters]\nsource = '{src}'\nsurce = '.'\n", "surce (from "),
    ({}, "[parameters\n", "not valid TOML"),
]


@pytest.mark.parametrize(
    ("env", "toml", "needle"), BAD_CONFIGS, ids=[n.split(" ")[0] for _, _, n in BAD_CONFIGS]
)
def test_bad_nightly_config_is_one_line_naming_the_field(
    tmp_path: Path, env: dict[str, str], toml: str, needle: str
) -> None:
    src = ROOT / "examples" / "hello-go"
    text = toml.replace("{src}", str(src)) or f"[parameters]\nsource = '{src}'\n"
    cfg = write_config(tmp_path / "n.toml", text)
    with pytest.raises(ConfigError) as info:
        load_nightly_config({"GOBUILD_NIGHTLY_CONFIG": str(cfg), **env})
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_serve_refuses_a_bad_config_before_serving(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOBUILD_", "PREFECT_"))}
    env.update(
        GOBUILD_NIGHTLY_SOURCE=str(tmp_path / "missing"),
        PYTHONPATH=str(ROOT),
        PREFECT_API_URL="http://127.0.0.1:9/api",  # never contacted
    )
    proc = subprocess.run(
        [sys.executable, "-m", "deployments.serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: nightly config: source (from GOBUILD_NIGHTLY_SOURCE)")


# --- the served deployments ---------------------------------------------------------


def test_served_deployments_schedules_parameters_and_push_trigger(
    prefect_server: PrefectServer, served: Served, registry: Registry
) -> None:
    ids = served.deployment_ids
    with prefect_server.client() as api:
        nightly = api.get(f"/deployments/{ids['nightly']}").json()
        on_demand = api.get(f"/deployments/{ids['on-demand']}").json()
        on_push = api.get(f"/deployments/{ids['on-push']}").json()
        automations = api.post("/automations/filter", json={}).json()

    [schedule] = nightly["schedules"]
    assert schedule["active"]
    assert schedule["schedule"]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "Europe/Berlin"  # GOBUILD_NIGHTLY_TZ won
    assert nightly["parameters"] == {
        "source": str(served.source.resolve()),
        "output": str((served.work / "out" / "nightly.oci.tar").resolve()),
        "run_checks": False,
        "image_refs": [served.nightly_image],
        "tag_nightly": True,
    }
    assert on_demand["schedules"] == [] and on_demand["parameters"] == {}
    assert on_push["schedules"] == []
    for dep in (nightly, on_demand, on_push):
        assert dep["entrypoint"] == "flows.build.multistage_build"
        assert dep["enforce_parameter_schema"]

    [push] = [a for a in automations if a["actions"][0].get("deployment_id") == ids["on-push"]]
    assert push["enabled"]
    assert push["trigger"]["expect"] == ["git.push"]
    assert push["actions"][0]["type"] == "run-deployment"
    assert push["actions"][0]["parameters"] == {
        "source": "{{ event.payload.repository | default('') }}",
        "git_ref": "{{ event.payload.ref | default('') }}",
    }


def test_parameter_schema_has_title_description_and_default_for_every_field(
    prefect_server: PrefectServer, served: Served
) -> None:
    from tasks.params import BuildParams

    with prefect_server.client() as api:
        for name in ("nightly", "on-demand", "on-push"):
            dep = api.get(f"/deployments/name/{FLOW}/{name}").json()
            schema = dep["parameter_openapi_schema"]
            props = schema["properties"]
            assert set(props) == set(BuildParams.model_fields), name
            required = ["source"] if name == "on-demand" else []
            for field, prop in props.items():
                where = f"{name}: {field}"
                assert prop.get("title") and prop["title"] != field, where
                assert prop.get("description"), where
                assert ("default" in prop) is (field not in required), where
                assert not set("<>`") & set(prop["description"]), where  # renders in both UIs
            assert schema.get("required", []) == required, name
            assert schema.get("additionalProperties") is False, name


def test_cli_deployment_run_with_watch_completes(
    prefect_server: PrefectServer, served: Served, tmp_path: Path
) -> None:
    out = tmp_path / "cli.oci.tar"
    proc = cli(
        prefect_server,
        "deployment",
        "run",
        f"{FLOW}/on-demand",
        "-p",
        f"source={served.source}",
        "-p",
        f"output={out}",
        "-p",
        "run_checks=false",
        "-p",
        "version=1.0.0",
        "--watch",
        "--watch-timeout",
        str(int(BUILD_TIMEOUT)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + served.proc.tail()
    assert "Completed" in proc.stdout
    with prefect_server.client() as api:
        [run] = [
            r
            for r in runs_of(api, served.deployment_ids["on-demand"])
            if r["parameters"].get("output") == str(out)
        ]
    assert _state(run) == "COMPLETED"
    assert run["parameters"]["run_checks"] is False  # -p values are parsed as JSON
    assert binary_version(out, "hello-go", tmp_path / "x") == "hello-go 1.0.0"


def test_rest_create_flow_run_completes_and_wrong_types_and_names_are_rejected(
    prefect_server: PrefectServer, served: Served, tmp_path: Path
) -> None:
    dep = served.deployment_ids["on-demand"]
    out = tmp_path / "rest.oci.tar"
    with prefect_server.client() as api:
        run = create_run(
            api,
            dep,
            {"source": str(served.source), "output": str(out), "run_checks": False},
        )
        assert run["parameters"]["output"] == str(out)
        before = len(runs_of(api, dep))
        for bad, field in (
            ({"run_checks": "maybe"}, "run_checks"),
            ({"platforms": "linux/amd64"}, "platforms"),
            ({"labels": ["a=b"]}, "labels"),
            ({"platfroms": ["linux/amd64"]}, "platfroms"),  # a misspelled name
        ):
            r = api.post(
                f"/deployments/{dep}/create_flow_run",
                json={"parameters": {"source": str(served.source), **bad}},
            )
            assert r.status_code == 409, r.text
            assert field in r.json()["detail"]
        assert len(runs_of(api, dep)) == before  # nothing was created for the bad ones
    [done] = wait_final(prefect_server, [run["id"]], [served.proc])
    assert done["name"] == f"build {served.source}"
    assert out.is_file() and out.stat().st_size > 100_000


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        [
            "git",
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
            *args,
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def test_push_event_starts_a_run_with_templated_parameters(
    prefect_server: PrefectServer, served: Served, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    repo = tmp_path / "pushed-app"
    shutil.copytree(served.source, repo)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "release")
    _git(repo, "tag", "v1.2.3")
    tagged = _git(repo, "rev-parse", "HEAD")
    (repo / "main.go").write_text((repo / "main.go").read_text() + "\n// after the tag\n")
    _git(repo, "commit", "-qam", "after the tag")
    head = _git(repo, "rev-parse", "HEAD")
    url = git_daemon.add_repo("pushed-app", repo)
    payload = {"repository": url, "ref": "refs/tags/v1.2.3", "pusher": "test"}

    proc = cli(
        prefect_server,
        "event",
        "emit",
        "git.push",
        "--resource-id",
        "git.repository.pushed-app",
        "--payload",
        json.dumps(payload),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    dep = served.deployment_ids["on-push"]

    def triggered() -> list[dict]:
        with prefect_server.client() as api:
            return [r for r in runs_of(api, dep) if r["parameters"].get("source") == url]

    [run] = wait_for("the push-triggered run", triggered, timeout=120, procs=[served.proc])
    # The automation rendered the Jinja templates from the event's payload.
    assert run["parameters"] == {"source": url, "git_ref": "refs/tags/v1.2.3"}
    assert (run.get("created_by") or {}).get("type") == "AUTOMATION"
    [done] = wait_final(prefect_server, [run["id"]], [served.proc])
    with prefect_server.client() as api:
        report = artifacts(api, done["id"])["build-pushed-app"]["data"]
    assert f"commit: `{tagged}`" in report  # the pushed ref, not the branch head
    assert head not in report
    # No output parameter: the default, relative to the serving process's directory.
    assert (served.work / "build" / "pushed-app.oci.tar").is_file()

    # A push event without a repository leaves a visible trace: a Failed run that
    # names the parameter.
    before = {r["id"] for r in triggered_all(prefect_server, dep)}
    bad = {"ref": "refs/heads/main", "pusher": "test"}
    proc = cli(
        prefect_server, "event", "emit", "git.push",
        "--resource-id", "git.repository.nameless", "--payload", json.dumps(bad), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def new_run() -> list[dict]:
        return [r for r in triggered_all(prefect_server, dep) if r["id"] not in before]

    [nameless] = wait_for("the run of the nameless push", new_run, timeout=120)
    assert nameless["parameters"]["source"] == ""

    def failed() -> dict | None:
        with prefect_server.client() as api:
            run = api.get(f"/flow_runs/{nameless['id']}").json()
        return run if _state(run) in FINAL else None

    final = wait_for("the nameless push's run to end", failed, timeout=120, procs=[served.proc])
    assert _state(final) == "FAILED"
    assert "source: must not be empty" in final["state"]["message"]


def triggered_all(server: PrefectServer, deployment_id: str) -> list[dict]:
    with server.client() as api:
        return runs_of(api, deployment_id)


@pytest.fixture(scope="module")
def scheduled_runs(prefect_server: PrefectServer, served: Served) -> list[dict]:
    """Resume the test-only interval deployment until two scheduled runs completed, then
    pause it again (which deletes its remaining scheduled runs)."""
    dep = served.deployment_ids["nightly-test-interval"]
    with prefect_server.client() as api:
        assert api.get(f"/deployments/{dep}").json()["paused"]  # starts paused
        assert runs_of(api, dep) == []
        api.post(f"/deployments/{dep}/resume_deployment").raise_for_status()

    def two_completed() -> list[dict] | None:
        with prefect_server.client() as api:
            runs = runs_of(api, dep)
        failed = [r for r in runs if _state(r) in FINAL - {"COMPLETED"}]
        if failed:
            pytest.fail(f"scheduled run failed: {failed[0]['state']}\n{served.proc.tail()}")
        completed = [r for r in runs if _state(r) == "COMPLETED"]
        return completed if len(completed) >= 2 else None

    try:
        completed = wait_for(
            "two completed scheduled runs", two_completed, timeout=240, procs=[served.proc]
        )
    finally:
        with prefect_server.client() as api:
            api.post(f"/deployments/{dep}/pause_deployment").raise_for_status()
    wait_idle(prefect_server, [served.proc])
    return completed


def test_interval_schedule_produces_scheduled_runs_that_complete_with_nightly_tags(
    scheduled_runs: list[dict], served: Served, registry: Registry
) -> None:
    assert len(scheduled_runs) >= 2
    for run in scheduled_runs:
        assert run["auto_scheduled"], run  # created by the schedule, not by a request
        assert run["parameters"]["tag_nightly"] is True
    times = sorted(ts(r["expected_start_time"]) for r in scheduled_runs)
    assert times[1] - times[0] >= TEST_INTERVAL_SECONDS - 1  # one interval apart
    # The nightly config publishes: the configured tag and a nightly-YYYYMMDD tag.
    repository, _, tag = served.nightly_image.partition("/")[2].rpartition(":")
    tags = registry.tags(repository)
    days = {
        datetime.fromtimestamp(ts(r[k]), UTC).strftime("%Y%m%d")
        for r in scheduled_runs
        for k in ("start_time", "end_time")
    }
    assert tag in tags
    assert any(f"nightly-{day}" in tags for day in days), tags


def test_artifacts_of_scheduled_runs_are_readable_through_the_api(
    prefect_server: PrefectServer, scheduled_runs: list[dict], served: Served
) -> None:
    with prefect_server.client() as api:
        for run in scheduled_runs:
            arts = artifacts(api, run["id"])
            assert {"build-hello-go", "build-hello-go-platforms", "build-hello-go-image"} <= set(
                arts
            ), sorted(arts)
            report = arts["build-hello-go"]
            assert report["type"] == "markdown"
            assert "succeeded" in report["data"] and served.nightly_image in report["data"]
            table = arts["build-hello-go-platforms"]
            rows = table["data"] if isinstance(table["data"], list) else json.loads(table["data"])
            assert rows[0]["platform"] == default_platform() and rows[0]["binary_size"] > 100_000
            link = arts["build-hello-go-image"]["data"]
            assert "/v2/nightly/hello-go/manifests/" in link
        # The key's history across runs, as the UI's artifact page shows it.
        latest = api.get("/artifacts/build-hello-go/latest").json()
        assert latest["key"] == "build-hello-go" and latest["type"] == "markdown"


def test_six_simultaneous_triggers_never_run_more_than_two_builds_at_once(
    prefect_server: PrefectServer,
    served: Served,
    engine_process: EngineProcess,
    tmp_path: Path,
) -> None:
    wait_idle(prefect_server, [served.proc])
    builds_before = sum(e[:2] == ["go", "build"] for e in engine_process.log()["execs"])
    dep = served.deployment_ids["on-demand"]
    with prefect_server.client() as api:
        ids = [
            create_run(
                api,
                dep,
                {
                    "source": str(served.source),
                    "output": str(tmp_path / "shared.oci.tar"),  # one app, one output path
                    "version": f"6.0.{i}",  # a real link per run, not an engine cache hit
                    "run_checks": False,
                    "force_rebuild": True,
                },
            )["id"]
            for i in range(6)
        ]
    runs = wait_final(prefect_server, ids, [served.proc])
    # No run lost its output to another: each report names a tarball of its own
    # that holds the version that run built.
    with prefect_server.client() as api:
        reported = {}
        for run in runs:
            report = artifacts(api, run["id"])["build-hello-go"]["data"]
            tarball = re.search(r"- OCI tarball: `([^`]+)`", report)
            assert tarball, report
            reported[run["parameters"]["version"]] = tarball[1]
    assert len(set(reported.values())) == 6
    for version, tarball in reported.items():
        labels = inspect_config(f"oci-archive:{tarball}")["config"]["Labels"]
        assert labels["org.opencontainers.image.version"] == version
    assert (tmp_path / "shared.oci.tar").is_file()
    execs = engine_process.log()["execs"]
    assert sum(e[:2] == ["go", "build"] for e in execs) - builds_before == 6

    with prefect_server.client() as api:
        limit = api.get("/v2/concurrency_limits/gobuild-engine").json()
        tasks = api_task_runs(api, ids)
    assert limit["limit"] == 2 and limit["active"]
    # Every engine call of a run happens between its first task's start and its last
    # task's end, all inside the engine slot.
    spans: dict[str, tuple[float, float]] = {}
    for t in tasks:
        start, end = ts(t["start_time"]), ts(t["end_time"])
        lo, hi = spans.get(t["flow_run_id"], (start, end))
        spans[t["flow_run_id"]] = (min(lo, start), max(hi, end))
    assert len(spans) == 6
    engine_overlap = max_overlap(spans.values())
    # The runner ran the flow runs side by side (its limit is 8), so it was the global
    # concurrency limit, not the runner, that made the builds queue.
    run_overlap = max_overlap((ts(r["start_time"]), ts(r["end_time"])) for r in runs)
    detail = {
        "engine_overlap": engine_overlap,
        "run_overlap": run_overlap,
        "spans": sorted(spans.values()),
    }
    print(f"engine limit measurement: {detail}")  # shown with -s / on failure
    assert engine_overlap <= 2, detail
    assert run_overlap >= 3, detail


# --- workers: prefect.yaml on a process work pool ----------------------------------


def test_worker_runs_the_prefect_yaml_deployments(
    prefect_server: PrefectServer, engine_process: EngineProcess, tmp_path: Path
) -> None:
    # The served deployments have the same names; their runner would race the worker.
    prefect_server.stop_runners()
    proc = cli(
        prefect_server, "work-pool", "create", "gobuild-process", "--type", "process", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # GOBUILD_PROJECT_DIR is unset here, so the pull step keeps its template and each
    # worker resolves it from its own environment (Prefect would bake in a set value).
    proc = cli(prefect_server, "--no-prompt", "deploy", "--all", cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with prefect_server.client() as api:
        deps = {
            n: api.get(f"/deployments/name/{FLOW}/{n}").json()
            for n in ("nightly", "on-demand", "on-push")
        }
        automations = api.post("/automations/filter", json={}).json()
    for dep in deps.values():
        assert dep["work_pool_name"] == "gobuild-process"
        assert dep["entrypoint"] == "flows/build.py:multistage_build"
        assert dep["pull_steps"] == [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $GOBUILD_PROJECT_DIR }}"
                }
            }
        ]
    assert deps["nightly"]["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    [push] = [
        a for a in automations if a["actions"][0].get("deployment_id") == deps["on-push"]["id"]
    ]
    assert push["trigger"]["expect"] == ["git.push"]
    source = push["actions"][0]["parameters"]["source"]
    assert source == "{{ event.payload.repository | default('') }}"

    worker_env = {
        **prefect_server.env(),
        **engine_process.env,
        "GOBUILD_PROJECT_DIR": str(ROOT),
        "GOBUILD_RETRY_BASE_SECONDS": "0.2",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    worker = start_proc(
        "prefect worker",
        [PREFECT, "worker", "start", "--pool", "gobuild-process"],
        env=worker_env,
        cwd=tmp_path,
        log=tmp_path / "worker.log",
    )
    try:
        out = tmp_path / "worker.oci.tar"
        with prefect_server.client() as api:
            # A relative source: the pull step starts the run in GOBUILD_PROJECT_DIR,
            # while the worker itself runs in tmp_path.
            run = create_run(
                api,
                deps["on-demand"]["id"],
                {
                    "source": "examples/hello-go",
                    "output": str(out),
                    "run_checks": False,
                    "version": "7.0.0",
                },
            )
        [done] = wait_final(prefect_server, [run["id"]], [worker])
        assert done["work_pool_name"] == "gobuild-process"
        assert run["id"] in worker.log.read_text(errors="replace")  # this worker ran it
        assert binary_version(out, "hello-go", tmp_path / "x") == "hello-go 7.0.0"
    finally:
        # A worker may ignore SIGTERM; a second SIGINT makes it stop.
        worker.stop(signals=(signal.SIGINT, signal.SIGINT), grace=10)
