"""Real processes for the deployment tests: a Prefect server, a standalone Dagger test
engine, and ``python -m deployments.serve``.

Deployments are about processes talking to a server, so these tests run them the way
an operator would: ``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME
(database) and result storage, the test engine as its own process, and the serving
process pointed at both through the environment only. Each process starts in a new
session so that stopping it also stops what it started (served flow runs, uvicorn),
and each writes a log file whose tail goes into assertion messages.

Every child gets an environment built from scratch for Prefect, Dagger and gobuild
settings: the in-process ``prefect_test_harness`` of other test modules (and the
developer's own profile) must not leak into these processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.registry_fixtures import Registry, free_port

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
_OWN_PREFIXES = ("PREFECT_", "DAGGER_", "_EXPERIMENTAL_DAGGER", "GOBUILD_")

SERVER_START_TIMEOUT = 180.0
# Test-only interval of the `nightly-test-interval` deployment (it starts paused).
TEST_INTERVAL_SECONDS = 6


def clean_env() -> dict[str, str]:
    """This process's environment without any Prefect, Dagger or gobuild setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Proc:
    """A background process in its own session, with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, chars: int = 4000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- {self.name} log ({self.log}) ---\n{text[-chars:]}"

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, signals: Sequence[int] = (signal.SIGTERM,), grace: float = 15.0) -> None:
        """Signal the whole process group, one signal per grace period, then SIGKILL."""
        for sig in signals:
            if not self._signal_group(sig):
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
            if self.popen.poll() is not None:
                break
        self._signal_group(signal.SIGKILL)  # stragglers: flow-run subprocesses
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def _signal_group(self, sig: int) -> bool:
        try:
            os.killpg(self.popen.pid, sig)  # the group this fixture created
        except (ProcessLookupError, PermissionError):
            return False
        return True


def start_proc(
    name: str,
    args: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: Path,
    stdout: int | None = None,
) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else out,
            stderr=out,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def wait_for(
    what: str,
    check: Any,
    *,
    timeout: float,
    interval: float = 0.5,
    procs: Sequence[Proc] = (),
) -> Any:
    """Poll ``check()`` until it returns something truthy; fail with the logs if not."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        dead = [p for p in procs if not p.alive]
        if dead or time.monotonic() > deadline:
            reason = f"{dead[0].name} exited" if dead else f"timed out after {timeout:g} s"
            logs = "\n".join(p.tail() for p in procs)
            pytest.fail(f"waiting for {what}: {reason}\n{logs}")
        time.sleep(interval)


class RetryingTransport(httpx.HTTPTransport):
    """Retry 429/502/503 like Prefect's own client does: a busy SQLite-backed server
    answers 503 ("database is locked") now and then, and callers are expected to retry."""

    RETRY_STATUS = frozenset({429, 502, 503})

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(6):
            response = super().handle_request(request)
            if response.status_code not in self.RETRY_STATUS or attempt == 5:
                return response
            response.read()
            response.close()
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


@dataclass
class PrefectServer:
    """A ``prefect server start`` process and how to talk to it."""

    url: str  # http://127.0.0.1:PORT/api
    home: Path
    results: Path
    proc: Proc
    runners: list[Proc] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """For client processes (serve, CLI, worker) of this server."""
        return {
            **clean_env(),
            "PREFECT_API_URL": self.url,
            "PREFECT_HOME": str(self.home / "client"),
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(self.results),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, transport=RetryingTransport())

    def heartbeats(self, run_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """The run's ``prefect.flow-run.heartbeat`` events the server has stored
        (they arrive asynchronously)."""
        with self.client() as api:
            r = api.post(
                "/events/filter",
                json={
                    "filter": {
                        "event": {"name": ["prefect.flow-run.heartbeat"]},
                        "resource": {"id": [f"prefect.flow-run.{run_id}"]},
                    },
                    "limit": limit,
                },
            )
        r.raise_for_status()
        return r.json()["events"]

    def stop_runners(self) -> None:
        """Stop serving processes: a runner polls its deployments' runs whatever their
        work pool, so it would race a worker for runs of same-named deployments."""
        for proc in self.runners:
            proc.stop()
        self.runners.clear()


@contextlib.contextmanager
def running_prefect_server(
    base: Path,
    *,
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free port of 127.0.0.1: on ``database_url``
    (PostgreSQL) or, without one, on a fresh SQLite file in its own PREFECT_HOME
    (Prefect's default). Migrations run at start-up either way."""
    base.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {
        **clean_env(),
        "PREFECT_HOME": str(base / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(base / "results"),
        "PREFECT_UI_ENABLED": "false",
        **(extra_env or {}),
    }
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    proc = start_proc(
        "prefect server",
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=base,
        log=base / "server.log",
    )
    server = PrefectServer(
        url=f"http://127.0.0.1:{port}/api", home=base / "home", results=base / "results", proc=proc
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"{server.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not healthy():  # RuntimeError, not pytest.fail: the bench uses it too
            if not proc.alive or time.monotonic() > deadline:
                why = "exited" if not proc.alive else f"no answer in {SERVER_START_TIMEOUT:g} s"
                raise RuntimeError(f"the Prefect server {why}\n{proc.tail()}")
            time.sleep(0.3)
        yield server
    finally:
        server.stop_runners()
        proc.stop(grace=20)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with running_prefect_server(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server


@dataclass
class EngineProcess:
    """``python -m tests.dagger_test_engine`` running on its own, as a real engine
    runs beside its clients: its work never competes with theirs for one
    interpreter."""

    port: int
    token: str
    proc: Proc

    @property
    def env(self) -> dict[str, str]:
        return {"DAGGER_SESSION_PORT": str(self.port), "DAGGER_SESSION_TOKEN": self.token}

    def _admin(self, method: str, path: str) -> dict[str, Any]:
        r = httpx.request(
            method, f"http://127.0.0.1:{self.port}{path}", auth=(self.token, ""), timeout=10
        )
        r.raise_for_status()
        return r.json()

    def log(self) -> dict[str, Any]:
        """The engine's request log: ``{"requests": [{"time", "paths"}], "calls", "execs"}``."""
        return self._admin("GET", "/_test/log")

    def reset(self) -> None:
        """Clear the request log (and any injected faults)."""
        self._admin("POST", "/_test/reset")

    def go_version(self) -> str:
        """The Go toolchain the engine runs ``go`` commands with."""
        return str(self._admin("GET", "/_test/info")["go"])


@contextlib.contextmanager
def running_engine_process(base: Path) -> Iterator[EngineProcess]:
    """The test engine in a process of its own, state under ``base``, stopped on
    exit (RuntimeError, not pytest.fail: the bench uses it too)."""
    proc = start_proc(
        "dagger test engine",
        [sys.executable, "-m", "tests.dagger_test_engine", "--state-dir", str(base / "state")],
        env=clean_env(),
        cwd=ROOT,
        log=base / "engine.log",
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.popen.stdout is not None
        line = proc.popen.stdout.readline()  # one JSON line, as `dagger session` prints
        if not line:
            raise RuntimeError(f"the test engine printed nothing\n{proc.tail()}")
        info = json.loads(line)
        yield EngineProcess(port=int(info["port"]), token=info["session_token"], proc=proc)
    finally:
        proc.stop()
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()


@pytest.fixture(scope="module")
def engine_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    with running_engine_process(tmp_path_factory.mktemp("engine-process")) as engine:
        yield engine


@dataclass
class Served:
    """``python -m deployments.serve`` and the files it was given."""

    proc: Proc
    work: Path  # its working directory: default outputs land in work/build
    source: Path  # a copy of examples/hello-go, also the nightly source
    config: Path  # its nightly.toml
    nightly_image: str  # the nightly config's image reference (repository:tag)
    deployment_ids: dict[str, str]


SERVED_DEPLOYMENTS = ("nightly", "on-demand", "on-push", "nightly-test-interval")


@pytest.fixture(scope="module")
def served(
    prefect_server: PrefectServer,
    engine_process: EngineProcess,
    registry: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("served")
    source = work / "hello-go"
    shutil.copytree(ROOT / "examples" / "hello-go", source)
    image = f"{registry.host}/nightly/hello-go:edge"
    config = work / "nightly.toml"
    config.write_text(
        "# written by tests/server_fixtures.py\n"
        'timezone = "UTC"\n'
        "[parameters]\n"
        'source = "hello-go"\n'
        'output = "out/nightly.oci.tar"\n'
        "run_checks = false\n"
        f'image_refs = ["{image}"]\n'
    )
    env = {
        **prefect_server.env(),
        **engine_process.env,
        "GOBUILD_NIGHTLY_CONFIG": str(config),
        "GOBUILD_NIGHTLY_TZ": "Europe/Berlin",  # the environment overrides the file
        "GOBUILD_ENGINE_CONCURRENCY": "2",
        "GOBUILD_SERVE_LIMIT": "8",  # above the engine limit: the limit must do the queueing
        "GOBUILD_RETRY_BASE_SECONDS": "0.2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    proc = start_proc(
        "deployments.serve",
        [
            sys.executable,
            "-m",
            "deployments.serve",
            "--test-interval-seconds",
            str(TEST_INTERVAL_SECONDS),
        ],
        env=env,
        cwd=work,
        log=work / "serve.log",
    )
    prefect_server.runners.append(proc)
    ids: dict[str, str] = {}

    def registered() -> bool:
        with prefect_server.client() as api:
            for name in SERVED_DEPLOYMENTS:
                if name not in ids:
                    r = api.get(f"/deployments/name/multistage-build/{name}")
                    if r.status_code != 200:
                        return False
                    ids[name] = r.json()["id"]
        return "Your deployments are being served" in proc.log.read_text(errors="replace")

    try:
        wait_for("the served deployments", registered, timeout=120, procs=[proc])
        yield Served(
            proc=proc,
            work=work,
            source=source,
            config=config,
            nightly_image=image,
            deployment_ids=ids,
        )
    finally:
        if proc in prefect_server.runners:
            prefect_server.runners.remove(proc)
        proc.stop(grace=20)
