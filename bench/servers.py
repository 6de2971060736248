"""The Prefect API the benchmark talks to: the local API server as
``python -m flows.build`` runs it (``flows/local_api.py``), over a SQLite
database of its own, started once and stopped at the end.

Prefect's own test harness (``prefect_test_harness``) would serve Prefect's
server as it is: on SQLite, a flow run that starts while the server still
records the last one's events waits 2 s or more for the client's back-off
(section 9 measures it), and those waits would land on whichever side of a
comparison happened to start then.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def local_server(home: Path, replay: bool) -> Iterator[tuple[str, Path]]:
    """A local API server over its own ``PREFECT_HOME``: -> (API URL, its log)."""
    import httpx

    from flows.local_api import _free_port

    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = home / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    args = [sys.executable, "-m", "flows.local_api", "serve", "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            args + ([] if replay else ["--no-replay"]), cwd=ROOT, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench: local API server did not start: {log.read_text()}")
            time.sleep(0.1)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
