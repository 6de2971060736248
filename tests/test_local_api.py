"""The local Prefect API of the command line (``flows/local_api.py``).

With no ``PREFECT_API_URL`` the CLI starts one server per ``PREFECT_HOME`` and every
later build reuses it, instead of a temporary server per process. These tests run
the CLI and the module as a user would, in subprocesses with a ``PREFECT_HOME`` of
their own, and stop every server they started.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dagger_test_engine.server import TestEngine
from tests.server_fixtures import clean_env

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return ""


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A PREFECT_HOME of the test's own; its local server is stopped afterwards."""
    path = tmp_path / "prefect-home"
    yield path
    subprocess.run(
        [sys.executable, "-m", "flows.local_api", "stop"],
        cwd=ROOT,
        env=_env(path),
        capture_output=True,
        timeout=60,
        check=False,
    )


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {
        **clean_env(),
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        **extra,
    }


def _uuid(value: str) -> str:
    """A UUID as the API writes it, whichever form SQLite holds."""
    return str(uuid.UUID(value))


def _state(home: Path) -> dict:
    return json.loads((home / "gobuild-api.json").read_text())


def _cli(home: Path, engine: TestEngine, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.build", *args],
        cwd=ROOT,
        env={**_env(home, **extra), **engine.env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_builds_reuse_one_local_server_and_stop_ends_it(
    home: Path, test_engine_session: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    args = [str(hello_go), "--no-checks", "--output", str(tmp_path / "out" / "h.tar")]
    # The server the first build starts writes task runs and events in batches; with
    # batches this big and this slow, only stopping it writes them (checked below).
    slow_batches = {
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "600",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "600",
    }
    first = _cli(home, test_engine_session, *args, **slow_batches)
    assert first.returncode == 0, first.stderr[-3000:]
    state = _state(home)
    assert _alive(state["pid"])
    assert "Starting temporary server" not in first.stderr  # not Prefect's per-process one

    second = _cli(home, test_engine_session, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _state(home) == state  # the same server, not a new one
    starting = "starting the local Prefect API server"
    assert starting in first.stderr and starting not in second.stderr
    assert first.stdout.split()[-1] == second.stdout.split()[-1]  # same digest: from cache

    # Both runs are in that server's database, so `prefect server start` on this
    # PREFECT_HOME (or the status command's URL) shows them.
    url = f"http://127.0.0.1:{state['port']}/api"
    runs = httpx.post(f"{url}/flow_runs/filter", json={}, timeout=30).json()
    assert len(runs) == 2 and {r["state_type"] for r in runs} == {"COMPLETED"}
    # Their task runs are still in the recorder's batch, not yet in the database.
    assert httpx.post(f"{url}/task_runs/filter", json={}, timeout=30).json() == []

    status = subprocess.run(
        [sys.executable, "-m", "flows.local_api", "status"],
        cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 0 and f"127.0.0.1:{state['port']}/api" in status.stdout

    stop = subprocess.run(
        [sys.executable, "-m", "flows.local_api", "stop"],
        cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert stop.stdout.strip() == "stopped"
    assert not _alive(state["pid"])
    assert not (home / "gobuild-api.json").exists()

    # Stopping wrote what the batches held: each run's four stages, each in a final
    # state, and their events.
    with contextlib.closing(sqlite3.connect(home / "prefect.db")) as db:
        stages = db.execute("SELECT flow_run_id, name, state_type FROM task_run").fetchall()
        events = db.execute(
            "SELECT count(*) FROM events WHERE event LIKE 'prefect.task-run.%'"
        ).fetchone()[0]
    for run in runs:
        mine = [(name, kind) for flow_run, name, kind in stages if _uuid(flow_run) == run["id"]]
        assert len(mine) == 4 and {kind for _, kind in mine} == {"COMPLETED"}, (run["id"], stages)
    assert events >= len(stages) * 2  # at least Pending and a final state each


def test_simultaneous_starts_make_one_server(home: Path) -> None:
    code = "from flows import local_api; print(local_api.ensure())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(3)
    ]  # fmt: skip
    urls = set()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        urls.add(out.strip())
    assert len(urls) == 1
    servers = subprocess.run(
        ["pgrep", "-f", f"flows.local_api serve --port {_state(home)['port']}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    assert servers == [str(_state(home)["pid"])]
    assert urls == {f"http://127.0.0.1:{_state(home)['port']}/api"}


def test_idle_server_stops_by_itself(home: Path) -> None:
    env = _env(home, GOBUILD_LOCAL_API_IDLE_MINUTES="0.05")  # 3 s
    code = "from flows import local_api; print(local_api.ensure())"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    pid = _state(home)["pid"]
    deadline = time.monotonic() + 120  # a generous bound, not a speed target
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(pid)
    assert not (home / "gobuild-api.json").exists()
    assert "no request for 0.05 minutes" in (home / "gobuild-api.log").read_text()


def test_a_server_of_another_version_or_a_dead_one_is_replaced(home: Path) -> None:
    code = "from flows import local_api; print(local_api.ensure())"

    def ensure() -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=_env(home), capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip()

    ensure()
    old = _state(home)
    (home / "gobuild-api.json").write_text(json.dumps({**old, "prefect_version": "0.0.1"}))
    ensure()
    new = _state(home)
    assert new["pid"] != old["pid"] and not _alive(old["pid"])

    # A state file naming a process that is gone (or not ours) is not trusted.
    (home / "gobuild-api.json").write_text(json.dumps({**new, "pid": os.getpid(), "port": 1}))
    ensure()
    assert _state(home)["pid"] not in (new["pid"], os.getpid())
    assert _alive(os.getpid())  # someone else's pid in the file was left alone
    os.kill(new["pid"], 15)  # orphaned by the forged state file


@pytest.mark.parametrize(
    "extra", [{"GOBUILD_LOCAL_API": "0"}, {"PREFECT_API_URL": "http://127.0.0.1:9/api"}]
)
def test_opt_out_and_a_configured_api_start_no_local_server(
    home: Path, extra: dict[str, str]
) -> None:
    code = "from flows import local_api; print(local_api.wanted())"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(home, **extra), capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(home), capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_simultaneous_cli_builds_share_one_local_server(
    home: Path, test_engine_session: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    """Builds started at once with no API configured: one server starts, every
    build completes against it, each with its own version in its own tarball."""
    versions = ["9.0.1", "9.0.2", "9.0.3"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.build", str(hello_go), "--no-checks", "--version", v,
             "--output", str(tmp_path / "out" / "h.tar"), "--progress", "quiet"],
            cwd=ROOT, env={**_env(home), **test_engine_session.env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for v in versions
    ]  # fmt: skip
    tarballs = set()
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        tarballs.add(out.split()[-2])
    assert len(tarballs) == len(versions)
    state = _state(home)
    servers = subprocess.run(
        ["pgrep", "-f", "flows.local_api serve"], capture_output=True, text=True, check=False
    ).stdout.split()
    assert str(state["pid"]) in servers
    runs = httpx.post(
        f"http://127.0.0.1:{state['port']}/api/flow_runs/filter", json={}, timeout=30
    ).json()
    assert sorted(r["state_type"] for r in runs) == ["COMPLETED"] * len(versions)
    # Only one server for this PREFECT_HOME: every other one belongs to another home.
    for pid in servers:
        if pid != str(state["pid"]):
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert f"PREFECT_HOME={home}".encode() not in environ
