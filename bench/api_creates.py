"""How often a Prefect server answers 503 to simultaneous REST triggers, on SQLite
and on PostgreSQL, side by side.

    python -m bench.api_creates [--n 20] [--rounds 5] [--json PATH]

Users trigger builds over the REST API (CI jobs, webhooks), often several at
once. A server on SQLite, Prefect's default, serialises every write: when
simultaneous ``create_flow_run`` requests collide it answers ``503`` ("database
is locked") and the caller must retry. The README says what to expect and
recommends PostgreSQL for production, so this measures both on the same machine:
a fresh ``prefect server start`` on a fresh SQLite file, then one on a fresh
PostgreSQL cluster (``tests/postgres_fixtures.py``: Debian's ``postgresql``,
127.0.0.1, durable settings), each with one deployment whose parameter schema is
closed (as ours are), then ``--rounds`` times ``--n`` threads released together,
each creating one run with an idempotency key and retrying 429/502/503 with
jittered exponential backoff as Prefect's own client does. The servers are
measured one after the other, so they do not compete for the CPU.

Printed per database: the share of first attempts answered 503 (what a caller
without retries would lose), the 503s among all attempts, the most attempts one
request needed, and whether every request ended with its run created (none may
be lost). No figure is asserted: ``tests/test_scale_out.py`` uses
:func:`create_simultaneously` for its own triggers and reports its 503 count.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

RETRY_STATUS = frozenset({429, 502, 503})
MAX_ATTEMPTS = 10


@dataclass
class Created:
    """One create_flow_run request, through its retries."""

    statuses: list[int]  # every attempt's HTTP status, in order
    run: dict[str, Any] | None  # the created run (final 201)
    seconds: float  # from the barrier's release to the final answer
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.statuses[-1] == 201 and self.run is not None


def create_simultaneously(
    api_url: str, deployment_id: str, bodies: list[dict[str, Any]], *, seed: int | None = None
) -> list[Created]:
    """POST ``/deployments/{id}/create_flow_run`` once per body, all released at the
    same instant (one thread and one connection each, like separate callers),
    retrying 429/502/503 with jittered exponential backoff (0.25 s doubling, at most
    ``MAX_ATTEMPTS`` attempts). Bodies should carry an ``idempotency_key``, so that
    a retry whose first attempt did get through returns the same run."""
    rng = random.Random(seed)
    jitters = [[rng.uniform(0.5, 1.5) for _ in range(MAX_ATTEMPTS)] for _ in bodies]
    barrier = threading.Barrier(len(bodies))

    def one(i: int) -> Created:
        statuses: list[int] = []
        with httpx.Client(base_url=api_url, timeout=60) as client:
            client.get("/health")  # connect before the barrier: measure the server, not TCP
            barrier.wait()
            start = time.monotonic()
            for attempt in range(MAX_ATTEMPTS):
                r = client.post(f"/deployments/{deployment_id}/create_flow_run", json=bodies[i])
                statuses.append(r.status_code)
                if r.status_code not in RETRY_STATUS:
                    break
                time.sleep(min(0.25 * 2**attempt, 8.0) * jitters[i][attempt])
            run = r.json() if r.status_code == 201 else None
            return Created(statuses, run, time.monotonic() - start, bodies[i])

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(one, range(len(bodies))))


def make_deployment(api_url: str, name: str) -> str:
    """A flow and a deployment to trigger (no work pool: runs stay Scheduled), with
    a closed parameter schema so the server validates each create as ours do."""
    with httpx.Client(base_url=api_url, timeout=60) as api:
        flow = api.post("/flows/", json={"name": "api-creates-bench"})
        flow.raise_for_status()
        dep = api.post(
            "/deployments/",
            json={
                "name": name,
                "flow_id": flow.json()["id"],
                "enforce_parameter_schema": True,
                "parameter_openapi_schema": {
                    "type": "object",
                    "properties": {"version": {"type": "string", "title": "Version"}},
                    "additionalProperties": False,
                },
            },
        )
        dep.raise_for_status()
        return dep.json()["id"]


@dataclass
class Measured:
    database: str
    n: int
    rounds: int
    requests: int = 0
    first_503: int = 0  # requests whose first attempt was answered 503
    attempts: int = 0
    all_503: int = 0  # 503 answers among all attempts
    most_attempts: int = 0
    created: int = 0  # distinct runs created
    failed: list[list[int]] = field(default_factory=list)  # statuses of lost requests
    round_seconds: list[float] = field(default_factory=list)  # slowest request per round

    @property
    def first_503_rate(self) -> float:
        return self.first_503 / self.requests if self.requests else 0.0


def measure(database: str, api_url: str, n: int, rounds: int) -> Measured:
    dep = make_deployment(api_url, f"bench-{database}")
    out = Measured(database, n, rounds)
    # One untimed request: the first create warms the server's caches and pools.
    create_simultaneously(api_url, dep, [{"parameters": {"version": "warm-up"}}])
    ids: set[str] = set()
    for r in range(rounds):
        bodies = [
            {"parameters": {"version": f"{r}.{i}"}, "idempotency_key": f"{database}-{r}-{i}"}
            for i in range(n)
        ]
        results = create_simultaneously(api_url, dep, bodies, seed=r)
        for c in results:
            out.requests += 1
            out.attempts += len(c.statuses)
            out.first_503 += c.statuses[0] == 503
            out.all_503 += c.statuses.count(503)
            out.most_attempts = max(out.most_attempts, len(c.statuses))
            if c.ok and c.run is not None:
                ids.add(c.run["id"])
            else:
                out.failed.append(c.statuses)
        out.round_seconds.append(max(c.seconds for c in results))
        time.sleep(1.0)  # let the server settle between rounds
    out.created = len(ids)
    return out


def _round_seconds(m: Measured) -> str:
    return f"{statistics.median(m.round_seconds):.2f} s [{max(m.round_seconds):.2f}]"


def table(results: list[Measured]) -> str:
    rows = [
        ("requests (n x rounds)", lambda m: f"{m.requests} ({m.n} x {m.rounds})"),
        ("first attempt answered 503", lambda m: f"{m.first_503} ({m.first_503_rate:.0%})"),
        ("503s among all attempts", lambda m: f"{m.all_503} of {m.attempts}"),
        ("most attempts for one request", lambda m: str(m.most_attempts)),
        ("runs created (none lost)", lambda m: f"{m.created} of {m.requests}"),
        ("round until last created, median [max]", _round_seconds),
    ]
    head = "| measure | " + " | ".join(m.database for m in results) + " |"
    sep = "|---|" + "---|" * len(results)
    body = [f"| {name} | " + " | ".join(f(m) for m in results) + " |" for name, f in rows]
    return "\n".join([head, sep, *body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.api_creates", description=__doc__)
    ap.add_argument("--n", type=int, default=20, help="simultaneous requests per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        ap.error("--n and --rounds must be at least 1")

    from bench.run import machine_info
    from tests.postgres_fixtures import running_postgres
    from tests.server_fixtures import running_prefect_server

    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="gobuild-api-creates-"))
    results = []
    print(f"api_creates: work dir {work}", file=sys.stderr)
    try:
        with running_prefect_server(work / "sqlite") as server:
            print("api_creates: SQLite server up, measuring", file=sys.stderr, flush=True)
            results.append(measure("SQLite", server.url, args.n, args.rounds))
        with (
            running_postgres(work / "postgres") as pg,
            running_prefect_server(work / "pg", database_url=pg.url) as server,
        ):
            print("api_creates: PostgreSQL server up, measuring", file=sys.stderr, flush=True)
            results.append(measure("PostgreSQL", server.url, args.n, args.rounds))
    finally:  # a failure to start a server carries its log's tail in the exception
        shutil.rmtree(work, ignore_errors=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"Simultaneous create_flow_run requests, {when}; {machine['cores']} cores "
        f"({machine['cpu']}), {machine['platform']}, Python {machine['python']}, "
        f"prefect {machine['prefect']}; load average at start {machine['loadavg_start']}\n"
    )
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "when": when,
                    "machine": machine,
                    "results": [asdict(m) | {"first_503_rate": m.first_503_rate} for m in results],
                },
                indent=2,
            )
        )
    return 0 if all(m.created == m.requests for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
