"""The ``multistage-build`` flow end to end: real Prefect API, real SDK, test engine.

Each test reads back what a user would look at (artifacts, events, task-run
states, the image itself) rather than trusting the flow's return value.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagger
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from flows.build import multistage_build
from tasks.params import ParamsError
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import artifacts, build, events, task_runs
from tests.git_servers import GitDaemon
from tests.gitrepo import commit_all, git
from tests.oci_check import ELF_AARCH64, ELF_X86_64, elf_machine, extract_file, inspect_config
from tests.prefect_fixtures import PrefectAPI
from tests.registry_fixtures import Registry, free_port

ROOT = Path(__file__).resolve().parents[1]


def test_two_platforms_build_concurrently_with_reports(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hello.oci.tar"
    state = build(
        source=str(hello_go),
        platforms=["linux/amd64", "linux/arm64"],
        version="2.0.1",
        output=str(out),
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert set(result.platforms) == {"linux/amd64", "linux/arm64"}
    assert result.go_version == dagger_engine.engine.go_version()  # read from the binary

    # The image itself, read by skopeo: the amd64 binary runs and is stamped.
    archive = f"oci-archive:{out}"
    amd = extract_file(archive, "/usr/local/bin/hello-go", tmp_path / "amd", "amd64")
    assert elf_machine(amd) == ELF_X86_64
    proc = subprocess.run([str(amd), "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "hello-go 2.0.1"
    arm = extract_file(archive, "/usr/local/bin/hello-go", tmp_path / "arm", "arm64")
    assert elf_machine(arm) == ELF_AARCH64
    cfg = inspect_config(archive, "arm64")["config"]
    assert cfg["Entrypoint"] == ["/usr/local/bin/hello-go"]
    assert cfg["User"] == "65532"
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.title"] == "hello-go"
    assert labels["org.opencontainers.image.version"] == "2.0.1"
    assert labels["org.opencontainers.image.created"]
    assert labels["org.opencontainers.image.source"].endswith("hello-go")

    # One builder for all platforms: the gate ran once, the builds once each.
    execs = [" ".join(e[:2]) for e in dagger_engine.log.snapshot()["execs"]]
    assert execs.count("go vet") == 1 and execs.count("go test") == 1
    assert execs.count("go build") == 2

    # Both compile task runs were in flight at the same time.
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    amd_run, arm_run = runs["compile linux/amd64"], runs["compile linux/arm64"]
    assert amd_run.start_time < arm_run.end_time and arm_run.start_time < amd_run.end_time

    # Reports, read back through the Prefect API.
    arts = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    md = arts["build-hello-go"].data
    for needle in (
        "load source",
        "compile linux/amd64",
        "assemble runtime",
        "publish",
        "miss",
        result.digest,
        result.source_digest,
        "Go version",
        "linux/arm64",
    ):
        assert needle in md, needle
    table = arts["build-hello-go-platforms"]
    assert table.type == "table"
    rows = table.data if isinstance(table.data, list) else __import__("json").loads(table.data)
    assert {r["platform"] for r in rows} == {"linux/amd64", "linux/arm64"}
    assert all(r["binary_size"] > 100_000 for r in rows)
    exported = events("gobuild.image.exported", {"digest": result.digest})
    assert exported and exported[0].resource.id == "gobuild.image.hello-go"


def test_builds_sharing_one_session_each_compile_their_own_source(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    """Every build of a test runs in one engine session (DAGGER_SESSION_PORT), as
    under ``dagger run`` around a worker, where the engine keeps a host directory
    per client by its arguments (core/schema/host.go, dagql RequestedCacheInput).
    A second build of one directory must still compile what the directory now
    holds, not the first build's snapshot."""
    src = tmp_path / "app"
    shutil.copytree(hello_go, src)
    out = tmp_path / "app.tar"
    first = build(source=str(src), version="1.0.0", output=str(out), run_checks=False)
    assert first.is_completed(), first.message
    main = src / "main.go"
    main.write_text(main.read_text().replace('"hello-go %s\\n"', '"edited %s\\n"'))
    second = build(source=str(src), version="1.0.0", output=str(out), run_checks=False)
    assert second.is_completed(), second.message
    assert second.result().source_digest != first.result().source_digest
    sessions = {r["session"] for r in dagger_engine.log.snapshot()["requests"]}
    assert len(sessions) == 1  # the premise: one session for both builds
    binary = extract_file(f"oci-archive:{out}", "/usr/local/bin/app", tmp_path / "bin")
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout == "edited 1.0.0\n"


def test_second_run_in_a_new_process_is_cached_even_on_a_fresh_engine(
    prefect_api: PrefectAPI, test_engine_session: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cached.oci.tar"
    args = [
        sys.executable,
        "-m",
        "flows.build",
        str(hello_go),
        "--version",
        "3.0.0",
        "--output",
        str(out),
    ]

    # The CLI, saying at exit whether the Dagger SDK was imported.
    watched = [
        sys.executable,
        "-c",
        "import atexit, runpy, sys\n"
        "say = lambda: print('sdk imported:', 'dagger' in sys.modules, file=sys.stderr)\n"
        "atexit.register(say)\n"
        "runpy.run_module('flows.build', run_name='__main__')",
        *args[3:],
    ]

    def cli(engine: TestEngine) -> subprocess.CompletedProcess:
        env = {**os.environ, **prefect_api.env, **engine.env}
        return subprocess.run(
            watched, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
        )

    first = cli(test_engine_session)
    assert first.returncode == 0, first.stderr[-2000:]
    digest = first.stdout.split()[-1]
    assert digest.startswith("sha256:")

    # A new engine: its caches are empty, so anything not served by Prefect's
    # result store would have to run again.
    fresh = TestEngine(tmp_path / "fresh-engine").start()
    try:
        second = cli(fresh)
        log = fresh.log.snapshot()
    finally:
        fresh.stop()
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split()[-1] == digest
    assert log["execs"] == []
    assert log["requests"] == []  # served from Prefect's cache: not even a session
    # ... nor the SDK's import (tasks/sdk.py), which a build that uses the engine pays.
    assert "sdk imported: False" in second.stderr, second.stderr[-2000:]
    assert "sdk imported: True" in first.stderr, first.stderr[-2000:]
    # The terminal says so (compile + assemble), in the CLI's own lines: Prefect's
    # per-task chatter stays in the run's logs in the API, off the terminal.
    err = second.stderr
    assert "cache: every engine stage is in Prefect's cache" in err, err[-3000:]
    assert "compile linux/amd64: served from cache (key " in err, err[-3000:]
    assert "assemble runtime: served from cache (key " in err, err[-3000:]
    assert "Finished in state" not in err, err[-3000:]


def test_force_rebuild_bypasses_the_cache(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    params = dict(
        source=str(hello_go), version="4.0.0", output=str(tmp_path / "f.tar"), run_checks=False
    )
    assert build(**params).is_completed()
    dagger_engine.log.clear()
    with pytest.MonkeyPatch.context() as mp:  # a no-op build needs no engine at all
        mp.setenv("DAGGER_SESSION_PORT", str(free_port()))
        again = build(**params)
    assert again.is_completed(), again.message
    assert dagger_engine.log.snapshot()["requests"] == []
    dagger_engine.log.clear()
    forced = build(**params, force_rebuild=True)
    assert forced.is_completed()
    runs = {r.name: r for r in task_runs(forced.state_details.flow_run_id)}
    assert runs["compile linux/amd64"].state.name == "Completed"
    calls = dagger_engine.log.snapshot()["calls"]
    assert calls.get("File.export") == 1 and calls.get("Container.export") == 1

    # The requested path deleted: served from cache, and put back.
    output = Path(params["output"])
    stored = Path(forced.result().tarball)
    assert stored != output and stored.read_bytes() == output.read_bytes()
    output.unlink()
    dagger_engine.log.clear()
    restored = build(**params)
    assert restored.is_completed() and output.read_bytes() == stored.read_bytes()
    assert dagger_engine.log.snapshot()["requests"] == []

    # A cached result naming a stored tarball that is gone is rebuilt, not reported.
    stored.unlink()
    dagger_engine.log.clear()
    healed = build(**params)
    assert healed.is_completed()
    assert Path(params["output"]).is_file()
    stages = {s.name: s.cached for s in healed.result().stages}
    assert stages["compile linux/amd64"] is True
    calls = dagger_engine.log.snapshot()["calls"]
    assert calls.get("Container.export") == 1 and "File.export" not in calls


def test_transient_failures_are_retried_then_succeed(
    prefect_api: PrefectAPI,
    dagger_cli_engine: TestEngine,
    registry: Registry,
    hello_go: Path,
    tmp_path: Path,
) -> None:
    # Compile's first export gets an HTTP 500, assemble's a dropped connection
    # (which ends the session, as on a real engine: the retry must open a new one),
    # the first publish a registry 503: each stage retries and the run succeeds.
    dagger_engine = dagger_cli_engine  # sessions started through the CLI, as without `dagger run`
    dagger_engine.add_fault("File.export", "http500")  # compile's binary
    dagger_engine.add_fault("Container.export", "drop")  # assemble's tarball
    dagger_engine.add_fault(
        "Container.publish", "error", message="failed to push: 503 Service Unavailable"
    )
    state = build(
        source=str(hello_go),
        version="5.0.0",
        output=str(tmp_path / "r.tar"),
        image_refs=[f"{registry.host}/team/hello:5.0.0"],
        force_rebuild=True,
    )
    assert state.is_completed(), state.message
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    assert runs["compile linux/amd64"].run_count == 2
    assemble = next(r for n, r in runs.items() if n.startswith("assemble"))
    assert assemble.run_count == 2
    publish = next(r for n, r in runs.items() if n.startswith("publish"))
    assert publish.run_count == 2
    ref = state.result().references[0]
    assert ref.startswith(f"{registry.host}/team/hello:5.0.0@sha256:")
    assert registry.manifest("team/hello", "5.0.0")[0] == ref.split("@")[1]
    assert all(f.fired == 1 for f in dagger_engine.faults)
    # Both transport errors (the HTTP 500 and the dropped connection) ended their
    # session; each retry opened a new one: three sessions in all.
    sessions = {r["session"] for r in dagger_engine.log.snapshot()["requests"]}
    assert len(sessions) == 3, sessions


def test_module_download_network_failure_is_retried(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    # The engine's first exec fails the way `go mod download` does when the module
    # proxy cannot be resolved: a network failure, so compile retries and passes.
    dagger_engine.add_fault(
        "exec",
        "exec",
        cmd=["go", "mod", "download"],
        message=(
            "go: github.com/google/uuid@v1.6.0: Get "
            '"https://proxy.golang.org/github.com/google/uuid/@v/v1.6.0.zip": '
            "dial tcp: lookup proxy.golang.org on 127.0.0.53:53: no such host"
        ),
    )
    state = build(
        source=str(hello_go),
        version="6.0.0-net",
        output=str(tmp_path / "n.tar"),
        run_checks=False,
        force_rebuild=True,
    )
    assert state.is_completed(), state.message
    assert dagger_engine.faults[0].fired == 1
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    assert runs["compile linux/amd64"].run_count == 2


def test_failing_go_test_is_reported_with_its_stdout(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    # `go test` prints a failing test's message on stdout, not stderr.
    app = tmp_path / "flaky-app"
    shutil.copytree(hello_go, app)
    (app / "fail_test.go").write_text(
        'package main\n\nimport "testing"\n\n'
        'func TestAlwaysFails(t *testing.T) { t.Fatal("boom-marker-1234") }\n'
    )
    state = build(source=str(app), output=str(tmp_path / "f.tar"))
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, dagger.ExecError) and exc.command[:2] == ["go", "test"]
    assert "boom-marker-1234" in exc.stdout
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    assert runs["compile linux/amd64"].run_count == 1  # a failing test is never retried
    arts = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    assert "boom-marker-1234" in arts["build-flaky-app-failure"].data
    failed = events("gobuild.build.failed", {"app": "flaky-app"})
    assert failed and "boom-marker-1234" in failed[0].payload["stdout_tail"]


def test_compile_error_fails_once_with_failure_artifact_and_event(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-app"
    shutil.copytree(hello_go, broken)
    (broken / "main.go").write_text(
        (broken / "main.go").read_text() + "\nfunc broken() { undefinedThing() }\n"
    )
    state = build(source=str(broken), output=str(tmp_path / "b.tar"), run_checks=False)
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, dagger.ExecError)
    builds = [e for e in dagger_engine.log.snapshot()["execs"] if e[:2] == ["go", "build"]]
    assert len(builds) == 1  # deterministic: never retried
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    assert runs["compile linux/amd64"].run_count == 1
    arts = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    md = arts["build-broken-app-failure"].data
    assert "go build -trimpath" in md
    assert "undefined: undefinedThing" in md
    failed = events("gobuild.build.failed", {"app": "broken-app"})
    assert failed and failed[0].payload["command"][:2] == ["go", "build"]


BAD_INPUTS = [
    ({"source": "/nonexistent/dir"}, "source"),
    ({"platforms": ["linux/sparc"]}, "platforms"),
    ({"platforms": []}, "platforms"),
    ({"builder_image": "golang:latest"}, "builder_image"),
    ({"runtime_image": "alpine"}, "runtime_image"),
    ({"version": "1.0 beta"}, "version"),
    ({"image_refs": ["Not A Ref"]}, "image_refs"),
    ({"registry_secret_block": "Has Spaces"}, "registry_secret_block"),
    ({"output": "build/app.zip"}, "output"),
    ({"labels": {"Bad Key": "x"}}, "labels"),
    ({"ldflags": "-X 'a=b'"}, "ldflags"),
    ({"main_package": "../elsewhere"}, "main_package"),
    # Valid as a path, but no process may create a directory in sysfs: refused
    # before the compile, not when the export lands.
    ({"output": "/sys/gobuild-test/app.tar"}, "output"),
    ({"timeout_minutes": 0}, "timeout_minutes"),
    ({"timeout_minutes": 1441}, "timeout_minutes"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_INPUTS, ids=[f for _, f in BAD_INPUTS])
def test_bad_inputs_rejected_before_engine_work(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, bad: dict, field: str
) -> None:
    state = build(**{"source": str(hello_go), **bad})
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, ParamsError | Exception)
    message = str(exc)
    assert field in message
    assert dagger_engine.log.snapshot()["requests"] == []


def test_cli_without_engine_fails_fast_with_one_line(tmp_path: Path, hello_go: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGGER_", "_EXPERIMENTAL"))}
    env.update(
        HOME=str(tmp_path), DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock", PATH="/usr/bin:/bin"
    )

    def cli(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flows.build", str(hello_go), *args],
            cwd=ROOT,
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    proc = cli()
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "container runtime such as Docker" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = cli(DAGGER_SESSION_PORT="1", DAGGER_SESSION_TOKEN="x")  # nothing listens there
    assert proc.returncode == 2
    assert "DAGGER_SESSION_PORT" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

    proc = cli("--platform", "x")
    assert proc.returncode == 2 and proc.stderr.startswith("error: platforms:")

    proc = cli("--output", "/sys/gobuild-test/app.tar")
    assert proc.returncode == 2 and proc.stderr.startswith("error: output: '/sys/gobuild-test/")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_flow_parameters_have_titles_descriptions_and_defaults() -> None:
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(multistage_build).model_dump()
    props = schema["properties"]
    assert "source" in props and "platforms" in props and "force_rebuild" in props
    for name, prop in props.items():
        assert prop.get("title") and prop["title"] != name, name
        assert prop.get("description"), name
        assert "default" in prop, name
    assert not schema.get("required")


def test_git_source_at_a_tag_records_the_commit(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    git_daemon: GitDaemon,
    hello_go: Path,
    tmp_path: Path,
) -> None:
    repo = tmp_path / "hello-repo"
    shutil.copytree(hello_go, repo)
    tagged = commit_all(repo, "v1")
    git(repo, "tag", "v1.0.0")
    (repo / "extra.go").write_text("package main\n\nvar extra = 1\n")
    commit_all(repo, "after the tag")
    git_daemon.add_repo("hello-repo", repo)
    url = git_daemon.url("hello-repo")

    out = tmp_path / "git.tar"
    state = build(
        source=url,
        git_ref="v1.0.0",
        version="1.0.0",
        output=str(out),
        run_checks=False,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result.commit == tagged
    cfg = inspect_config(f"oci-archive:{out}")["config"]
    assert cfg["Labels"]["org.opencontainers.image.revision"] == tagged
    assert cfg["Labels"]["org.opencontainers.image.source"] == url
    assert cfg["Labels"]["org.opencontainers.image.created"] == "1970-01-01T00:00:00Z"
    md = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}["build-hello-repo"]
    assert tagged in md.data


def test_cli_with_a_prefect_api_that_does_not_answer_fails_with_one_line(
    dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    """A configured PREFECT_API_URL nobody answers on: one line naming it, before
    the run starts and anything is built, instead of Prefect's traceback from
    inside the flow engine. (A forced build's session has started opening.)"""
    dead = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, **dagger_engine.env, "PREFECT_API_URL": dead}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    output = tmp_path / "never.tar"
    dagger_engine.log.clear()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.build", str(hello_go), "--force", "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: Prefect API (PREFECT_API_URL): ")
    assert dead.removesuffix("/api") in lines[0]
    assert not output.exists()
    assert dagger_engine.log.snapshot()["execs"] == []


def test_cli_failure_is_one_line_with_stage_and_output_and_no_traceback(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-cli"
    shutil.copytree(hello_go, broken)
    with (broken / "main.go").open("a") as fh:
        fh.write("\nfunc broken() { undefinedCliThing() }\n")
    env = {**os.environ, **prefect_api.env, **dagger_engine.env}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.build", str(broken), "--output", str(tmp_path / "c.tar")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    summary = proc.stderr[proc.stderr.index("error: build failed") :].splitlines()
    assert summary[0].startswith('error: build failed in compile linux/amd64: process "go')
    assert "--- last lines of stderr ---" in summary
    assert summary[-1].endswith("undefined: undefinedCliThing")


def test_a_build_past_timeout_minutes_is_stopped_naming_the_parameter_and_stage(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    """A test that hangs holds the worker and the engine slot until the deadline:
    then the stage is cancelled, the run fails in one line naming timeout_minutes
    and the stage, nothing is retried, and the requested output is not written."""
    app = tmp_path / "hangs"
    shutil.copytree(hello_go, app)
    (app / "hang_test.go").write_text(
        'package main\n\nimport (\n\t"testing"\n\t"time"\n)\n\n'
        "func TestHangs(t *testing.T) { time.Sleep(90 * time.Second) }\n"
    )
    output = tmp_path / "hangs.tar"
    env = {**os.environ, **prefect_api.env, **dagger_engine.env}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.build", str(app), "--output", str(output),
         "--timeout-minutes", "0.25", "--progress", "plain"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    summary = proc.stderr[proc.stderr.index("error: build failed") :].splitlines()
    assert summary == [
        "error: build failed in compile linux/amd64: the build ran past timeout_minutes "
        "(0.25 min) and was stopped; raise timeout_minutes for a build that needs longer"
    ]
    assert not output.exists()
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"build {app}"]))
        )
    assert run.state is not None and run.state.is_failed()
    compile_run = {r.name: r for r in task_runs(run.id)}["compile linux/amd64"]
    assert compile_run.run_count == 1 and not compile_run.state.is_completed()
    md = {a.key: a for a in artifacts(run.id) if a.key}["build-hangs-failure"].data
    assert "ran past timeout_minutes (0.25 min)" in md
    # The engine stops the hanging `go test` once no request waits for it (the
    # double as Dagger does it, tests/dagger_test_engine/execution.py): neither
    # `go test` nor its test binary goes on for the 90 s.
    ends = time.monotonic() + 15
    while _running_in_exec_roots(dagger_engine.engine.state_dir) and time.monotonic() < ends:
        time.sleep(0.2)
    assert _running_in_exec_roots(dagger_engine.engine.state_dir) == []


def _running_in_exec_roots(state_dir: Path) -> list[str]:
    """Processes working in one of the engine's exec roots: commands still running."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd, argv = os.readlink(proc / "cwd"), (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if cwd.startswith(str(state_dir)):
            found.append(argv.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found


def test_a_run_waiting_for_an_engine_slot_says_so(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    hello_go: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.concurrency.asyncio import concurrency

    from tasks.session import ensure_engine_limit

    monkeypatch.setenv("GOBUILD_ENGINE_LIMIT", "gobuild-wait-test")
    monkeypatch.setenv("GOBUILD_ENGINE_CONCURRENCY", "1")

    async def scenario():
        await ensure_engine_limit("gobuild-wait-test")
        async with concurrency("gobuild-wait-test", occupy=1, strict=True):  # another build
            run = asyncio.create_task(
                multistage_build(
                    source=str(hello_go),
                    version="8.0.0",
                    output=str(tmp_path / "w.tar"),
                    run_checks=False,
                    return_state=True,
                )
            )
            await asyncio.sleep(4)
            assert not run.done()  # it waits for the slot
        return await run

    state = asyncio.run(scenario())
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    assert any("waiting for an engine slot (1 of 1 in use" in entry.message for entry in logs)


def test_a_missing_engine_limit_is_created_on_first_use(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    hello_go: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The slot is asked for before the limit is read; a strict acquisition of a
    limit nobody created fails, and the run creates it and takes its slot."""
    monkeypatch.setenv("GOBUILD_ENGINE_LIMIT", "gobuild-created-on-use")
    monkeypatch.setenv("GOBUILD_ENGINE_CONCURRENCY", "3")
    state = build(source=str(hello_go), version="8.1.0", output=str(tmp_path / "c.tar"))
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("gobuild-created-on-use")
    assert (limit.limit, limit.active_slots) == (3, 0)


def test_bad_parameters_and_a_dead_engine_are_reported_where_they_failed(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    hello_go: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = build(source=str(hello_go), app_name="badparams", platforms=["linux/sparc"])
    assert state.is_failed()
    arts = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    assert "failed in parameters" in arts["build-badparams-failure"].data
    assert "linux/sparc" in arts["build-badparams-failure"].data
    [event] = events("gobuild.build.failed", {"app": "badparams"})
    assert event.payload["stage"] == "parameters"

    # A source no cache knows, and no engine: the connection is what failed.
    app = tmp_path / "deadengine"
    shutil.copytree(hello_go, app)
    monkeypatch.setenv("DAGGER_SESSION_PORT", str(free_port()))
    state = build(source=str(app), output=str(tmp_path / "d.tar"))
    assert state.is_failed()
    [event] = events("gobuild.build.failed", {"app": "deadengine"})
    assert event.payload["stage"] == "engine connection", event.payload
    loads = [r for r in task_runs(state.state_details.flow_run_id) if r.name.startswith("load")]
    assert [r.state.name for r in loads] == ["Completed"]

    # A forced build opens its session while the source is read: the connection
    # is still what failed, and the source stage still ends in a state of its own.
    state = build(
        source=str(app), app_name="deadforced", output=str(tmp_path / "f.tar"), force_rebuild=True
    )
    assert state.is_failed()
    [event] = events("gobuild.build.failed", {"app": "deadforced"})
    assert event.payload["stage"] == "engine connection", event.payload
    loads = [r for r in task_runs(state.state_details.flow_run_id) if r.name.startswith("load")]
    assert [r.state.name for r in loads] == ["Completed"]
