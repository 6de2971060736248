"""The local Prefect API that the command line starts once and then reuses.

    python -m flows.local_api status     # where it runs, since when, its log
    python -m flows.local_api stop       # stop it now (the next build starts it again)

With no ``PREFECT_API_URL``, Prefect starts a temporary API server inside every
process that runs a flow and stops it when the process ends. For a build that
Prefect serves from cache that is most of the time spent: the client imports the
whole server (~2 s) and then waits for the server process to import it too and
open the database (~3 s), every time. So ``python -m flows.build`` starts one
local server the first time, on 127.0.0.1, over the same database
(``PREFECT_HOME``) the temporary servers use, and later builds talk to it, as they
would to a ``prefect server start`` of the user's.

- It stops by itself after ``GOBUILD_LOCAL_API_IDLE_MINUTES`` (default 60) without
  a request, or with ``python -m flows.local_api stop``.
- It is one per ``PREFECT_HOME``: a lock file makes simultaneous builds wait for
  the one that starts it, and the state file names its port and process.
- It runs Prefect's server services that builds use, among them the lease
  repossessor, so an engine slot leased by a build that was killed comes back
  when the lease runs out, as on a shared server; not the UI (``prefect server
  start`` shows this database in the UI), nor the services of schedules, late
  runs, workers and pauses, which have nothing to do here.
- ``GOBUILD_LOCAL_API=0`` keeps Prefect's temporary server per process instead;
  a configured ``PREFECT_API_URL`` (environment or profile) is always used as is.
- A server started by another Prefect version or Python is replaced.
- A request that SQLite turned away because another write was under way (503)
  is asked again inside the server within milliseconds, rather than by the
  client after its 2 s back-off (``flows/busy_retry.py``).
- It records task runs and events from the runs' event stream in batches
  (``BATCHED_WRITES``), so a build's own requests (its state, its artifacts, its
  engine slot) do not wait behind a SQLite write per event. Task runs show up to
  2 s late and events up to 5 s late; stopping the server (``stop``, the idle
  timeout) writes what is pending first.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "gobuild-api.json"
LOCK_FILE = "gobuild-api.lock"
LOG_FILE = "gobuild-api.log"
IDLE_MINUTES_DEFAULT = 60.0
START_TIMEOUT_DEFAULT = 120.0
OFF_WORDS = {"0", "false", "no", "off"}
IDLE_SERVICES = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS")
# Prefect writes each task run state event as it arrives (a batch of 1) and events
# 20 at a time. Every write takes SQLite's one write lock, so those writes land in
# the middle of the requests a build waits for. A flush every few seconds, or
# when a batch is full, writes the same rows in one transaction. A user's own
# settings win. (Measured in the README's "The local Prefect API".)
BATCHED_WRITES = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "2",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "5",
}


class LocalAPIError(RuntimeError):
    """The local server did not come up; the message says where its log is."""


@dataclass
class ServerState:
    pid: int
    port: int
    prefect_version: str
    python: str
    started: float

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def wanted() -> bool:
    """Whether this process should use (and if needed start) the local server:
    only when no API is configured, and unless the user opted out."""
    from prefect.settings import get_current_settings

    if os.environ.get("GOBUILD_LOCAL_API", "1").strip().lower() in OFF_WORDS:
        return False
    return not get_current_settings().api.url


def home() -> Path:
    from prefect.settings import get_current_settings

    path = Path(get_current_settings().home).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    """One process at a time decides whether to start the server: the others wait
    and then find it running."""
    with open(base / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_state(base: Path) -> ServerState | None:
    try:
        return ServerState(**json.loads((base / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def healthy(state: ServerState, timeout: float = 2.0) -> bool:
    import httpx

    try:
        # verify=False: the URL is plain HTTP, and a verifying context would read
        # certifi's whole bundle (~50 ms) for a check made at every build.
        url = f"{state.api_url}/health"
        return httpx.get(url, timeout=timeout, verify=False).status_code == 200
    except httpx.HTTPError:
        return False


def _current(state: ServerState | None) -> bool:
    """Started by this Prefect and this Python: a server of another version would
    serve this client an API it may not match."""
    import prefect

    return (
        state is not None
        and state.prefect_version == prefect.__version__
        and state.python == sys.executable
    )


def ensure(*, quiet: bool = True) -> str:
    """The URL of the running local server, started first if there is none (said
    on stderr unless ``quiet``: the first build waits a few seconds for it)."""
    base = home()
    with _locked(base):
        state = read_state(base)
        if state is not None and _current(state) and healthy(state):
            return state.api_url
        if state is not None:
            _terminate(state)
        if not quiet:
            print(
                "starting the local Prefect API server (once; later builds reuse it: "
                "python -m flows.local_api status|stop)",
                file=sys.stderr,
                flush=True,
            )
        return _start(base).api_url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(base: Path, *, shipped: bool = True) -> ServerState:
    """Start a server over the database of ``base`` (a ``PREFECT_HOME``) and wait
    until it answers; ``shipped=False`` is Prefect's server as it is, for ``bench/together.py``."""
    import prefect

    port = _free_port()
    log_path = base / LOG_FILE
    args = [sys.executable, "-m", "flows.local_api", "serve", "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            args + ([] if shipped else ["--as-prefect"]),
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, "PREFECT_HOME": str(base)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a build's Ctrl-C must not stop the shared server
        )
    state = ServerState(
        pid=proc.pid,
        port=port,
        prefect_version=prefect.__version__,
        python=sys.executable,
        started=time.time(),
    )
    timeout = float(
        os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", START_TIMEOUT_DEFAULT)
    )
    deadline = time.monotonic() + timeout
    while not healthy(state, timeout=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            tail = log_path.read_text(errors="replace")[-1500:].strip()
            raise LocalAPIError(
                f"the local Prefect API server did not start (log: {log_path}): {tail}"
            )
        time.sleep(0.05)
    (base / STATE_FILE).write_text(json.dumps(asdict(state)))
    return state


def _terminate(state: ServerState, grace: float = 10.0) -> bool:
    """Stop the server named by ``state`` if that process is still one of ours."""
    if not _is_our_server(state.pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _is_our_server(state.pid):
            time.sleep(0.1)
        if _is_our_server(state.pid):
            os.kill(state.pid, signal.SIGKILL)
    return True


def _is_our_server(pid: int) -> bool:
    """The pid is alive and runs this module (a reused pid is left alone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"flows.local_api" in cmdline and b"serve" in cmdline


def stop() -> bool:
    """Stop the local server of this ``PREFECT_HOME``; -> whether one was running."""
    base = home()
    with _locked(base):
        state = read_state(base)
        stopped = state is not None and _terminate(state)
        (base / STATE_FILE).unlink(missing_ok=True)
    return stopped


def serve(port: int, idle_minutes: float, shipped: bool = True) -> None:
    """The server process: Prefect's API app with its services, minus the UI, that
    exits after ``idle_minutes`` without a request (0: never). ``shipped=False``:
    without the replay of busy requests and with Prefect's own write batches."""
    os.environ["PREFECT_UI_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Services for schedules, late runs, workers and pauses have nothing to do for
    # command-line builds, and polling costs CPU while the server idles.
    for service in IDLE_SERVICES:
        os.environ.setdefault(f"PREFECT_SERVER_SERVICES_{service}_ENABLED", "false")
    if shipped:
        for name, value in BATCHED_WRITES.items():
            os.environ.setdefault(name, value)
    import anyio
    import uvicorn

    app = api_app(replay=shipped)
    last_request = time.monotonic()

    async def tracked(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal last_request
        if scope["type"] == "http":
            last_request = time.monotonic()
        await app(scope, receive, send)

    server = uvicorn.Server(
        uvicorn.Config(tracked, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )

    async def watch_idle() -> None:
        nonlocal last_request
        while not server.should_exit:
            await anyio.sleep(5)
            if not server.started:  # the idle clock starts once it serves
                last_request = time.monotonic()
            elif idle_minutes > 0 and time.monotonic() - last_request > idle_minutes * 60:
                print(f"no request for {idle_minutes:g} minutes: stopping", flush=True)
                server.should_exit = True

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_idle)
            await server.serve()
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        base = home()
        state = read_state(base)
        if state is not None and state.pid == os.getpid():
            (base / STATE_FILE).unlink(missing_ok=True)


def api_app(replay: bool = True) -> Any:
    """Prefect's API app, behind the replay of requests SQLite turned away: it
    spares clients the 2 s back-off Prefect's client waits before it asks again
    (``flows/busy_retry.py``). ``replay=False`` is Prefect's server as it is, for
    ``bench/together.py`` to compare against."""
    from prefect.server.api.server import create_app

    from flows.busy_retry import ReplayWhenBusy

    api = create_app(final=True)
    return ReplayWhenBusy(api) if replay else api


def _idle_minutes() -> float:
    value = os.environ.get("GOBUILD_LOCAL_API_IDLE_MINUTES", str(IDLE_MINUTES_DEFAULT))
    try:
        return float(value)
    except ValueError:
        raise SystemExit(
            f"error: GOBUILD_LOCAL_API_IDLE_MINUTES: expected a number of minutes, got {value!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m flows.local_api",
        description="The local Prefect API server that python -m flows.build starts and reuses.",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="print the server's URL, process and log, if it runs")
    sub.add_parser("stop", help="stop the server (the next build starts it again)")
    serve_p = sub.add_parser("serve", help=argparse.SUPPRESS)
    serve_p.add_argument("--port", type=int, required=True)
    serve_p.add_argument("--as-prefect", dest="shipped", action="store_false")  # bench/
    args = ap.parse_args(argv)
    if args.command == "serve":
        serve(args.port, _idle_minutes(), args.shipped)
        return 0
    if args.command == "stop":
        print("stopped" if stop() else "not running")
        return 0
    base = home()
    state = read_state(base)
    if state is None or not healthy(state):
        print(f"not running (PREFECT_HOME {base})")
        return 1
    print(f"{state.api_url} pid {state.pid} prefect {state.prefect_version} log {base / LOG_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
