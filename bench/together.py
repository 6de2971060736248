"""Section 9: builds started together on the local API server as shipped, and on
Prefect's server as it is: without the server's replay of requests SQLite turned
away (``flows/busy_retry.py``) and with Prefect's own batches of task run and
event writes (``flows.local_api.BATCHED_WRITES``).

Two local API servers run side by side, each over a SQLite database of its own,
started as ``python -m flows.build`` starts its server: one as shipped, one with
``--as-prefect`` (Prefect's server as it is, so the client's 2 s back-off answers
every busy database). Each round starts the same number of forced builds at once
in one process against one server, then against the other, alternating which
goes first. Both sides use the same engine, app and Go caches.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.servers import local_server

if TYPE_CHECKING:
    from bench.run import Bench, Results

ROOT = Path(__file__).resolve().parents[1]
AT_ONCE = 4


def builds_at_once(bench: Bench, api_url: str, label: str, n: int = AT_ONCE) -> float:
    """Wall time of ``n`` forced builds started together, in a process of their own
    that talks to ``api_url`` only: Prefect's client services (events, slot
    leases) serve one API per process, as a build process has."""
    from bench.run import AMD64

    versions = [bench.fresh(label) for _ in range(n)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(bench.work / "together-client"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(bench.work / "together-results"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    }
    args = [sys.executable, "-m", "bench.together", str(bench.app), AMD64]
    args += [f"{version}={output}" for version, output in versions]
    proc = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench: builds at once failed: {proc.stderr[-3000:]}")
    return float(proc.stdout.split()[-1])


def _main(argv: list[str]) -> None:
    """In the child: start the builds together, print their wall time (imports and
    Prefect's client start-up before the clock, as in section 1)."""
    from flows.build import multistage_build

    app, platform, *builds = argv

    async def one(version: str, output: str) -> None:
        state = await multistage_build(
            source=app,
            version=version,
            output=output,
            platforms=[platform],
            force_rebuild=True,
            run_checks=False,
            return_state=True,
        )
        if not state.is_completed():
            raise RuntimeError(f"a build ended {state.name}: {state.message}")

    async def all_of_them() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(one(*b.split("=", 1)) for b in builds))
        return time.perf_counter() - started

    print(f"{asyncio.run(all_of_them()):.4f}")


def section_together(bench: Bench, runs: int, work: Path, res: Results) -> None:
    from bench.run import median, secs
    from flows.busy_retry import BUSY_LOG_PREFIX

    times: dict[bool, list[float]] = {True: [], False: []}
    with (
        local_server(work / "together-replay", shipped=True) as (replaying, log),
        local_server(work / "together-plain", shipped=False) as (plain, _),
    ):
        urls = {True: replaying, False: plain}
        for replay in (True, False):  # untimed: each database gets its flow and limit
            builds_at_once(bench, urls[replay], "together-warmup")
        replays_before = log.read_text().count(BUSY_LOG_PREFIX)
        for i in range(runs):
            for replay in (True, False) if i % 2 == 0 else (False, True):
                times[replay].append(builds_at_once(bench, urls[replay], "together"))
        replayed = log.read_text().count(BUSY_LOG_PREFIX) - replays_before
    sec = "9 together"
    with_replay, without = times[True], times[False]
    res.add(sec, f"{AT_ONCE} builds at once, Prefect's server as it is", secs(without))
    res.add(sec, f"{AT_ONCE} builds at once, local API as shipped", secs(with_replay))
    res.add(sec, "ratio as shipped / as it is", f"{median(with_replay) / median(without):.2f}x")
    res.add(sec, "requests the server replayed", f"{replayed / runs:.1f} per round")
    res.raw["together"] = {"replay": with_replay, "back_off_only": without, "replayed": replayed}


if __name__ == "__main__":
    _main(sys.argv[1:])
