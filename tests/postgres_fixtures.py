"""A PostgreSQL server, and a Prefect server on it, for the scale-out test and the
503 benchmark (``python -m bench.api_creates``).

Production runs Prefect on PostgreSQL (README, "Running in production"): SQLite
serialises every write, and a busy SQLite-backed server answers 503. So the
scale-out test runs the same database an operator would: Debian's ``postgresql``
server binaries (``/usr/lib/postgresql/<version>/bin``; ``scripts/test.sh``
installs the package when it runs as root), a throwaway cluster made with
``initdb`` and listening on 127.0.0.1 only (no Unix socket, so nothing is written
outside the cluster's own directory).

PostgreSQL refuses to run as root, and the tests do run as root on CI. The
cluster then belongs to the ``postgres`` user that the Debian package creates
(else ``nobody``): ``initdb`` and ``postgres`` are started with that user's uid
and gid (``subprocess``'s ``user``/``group``, no ``su``/``runuser`` needed), in a
directory under the system temp dir that it owns; pytest's own temp dirs are
private to root, so the cluster cannot live there. Clients (the Prefect server,
``createdb``) connect over TCP with ``trust`` authentication.

The context managers here raise plain exceptions, so the benchmark can use them
outside pytest; the fixtures turn a missing PostgreSQL into a test failure with
what to install, never a skip (CI forbids skips).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.registry_fixtures import free_port
from tests.server_fixtures import (
    PrefectServer,
    Proc,
    clean_env,
    running_prefect_server,
)

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_TOOLS = ("initdb", "postgres", "pg_isready", "createdb")
PG_USERS = ("postgres", "nobody")  # who owns the cluster when we are root
DATABASE = "prefect"
PG_START_TIMEOUT = 60.0


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or no unprivileged user to run them as."""


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's ``bin`` directory (``GOBUILD_TEST_PG_BINDIR``
    overrides it, e.g. for a non-Debian layout)."""
    if env := os.environ.get("GOBUILD_TEST_PG_BINDIR"):
        candidates = [Path(env)]
    else:

        def version(p: Path) -> tuple[int, ...]:
            return tuple(int(n) for n in re.findall(r"\d+", p.parent.name))

        candidates = sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")), key=version, reverse=True)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in PG_TOOLS):
            return bindir
    raise PostgresUnavailable(
        f"PostgreSQL server binaries ({', '.join(PG_TOOLS)}) not found in "
        f"{os.environ.get('GOBUILD_TEST_PG_BINDIR') or PG_BIN_GLOB}: install Debian's "
        "`postgresql` package (bash scripts/test.sh does, as root) or set "
        "GOBUILD_TEST_PG_BINDIR"
    )


def _unprivileged() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in PG_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable(
        f"running as root and none of the users {', '.join(PG_USERS)} exists to run "
        "PostgreSQL as (it refuses root); install Debian's `postgresql` package"
    )


@dataclass
class Postgres:
    """A running throwaway PostgreSQL cluster on 127.0.0.1."""

    port: int
    user: str  # the database superuser (trust authentication)
    database: str
    proc: Proc

    @property
    def url(self) -> str:
        """For ``PREFECT_API_DATABASE_CONNECTION_URL`` (Prefect's server uses asyncpg)."""
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{self.database}"


def _wait(what: str, check: Callable[[], bool], timeout: float, procs: list[Proc]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = [p for p in procs if not p.alive]
        if dead or time.monotonic() > deadline:
            reason = f"{dead[0].name} exited" if dead else f"timed out after {timeout:g} s"
            raise RuntimeError(
                f"waiting for {what}: {reason}\n" + "\n".join(p.tail() for p in procs)
            )
        time.sleep(0.3)


@contextlib.contextmanager
def running_postgres(log_dir: Path, *, fsync: bool = True) -> Iterator[Postgres]:
    """Create a cluster, start it on a free port of 127.0.0.1 and create the
    ``prefect`` database; stop and delete it afterwards.

    ``fsync=False`` trades durability (irrelevant for a throwaway cluster) for
    speed on a slow disk; the benchmark keeps it on, as production would."""
    bindir = postgres_bindir()
    owner = _unprivileged()
    as_owner: dict[str, Any] = {}
    base = Path(tempfile.mkdtemp(prefix="gobuild-pg-"))  # 0700, ours
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    env = {**clean_env(), "LC_ALL": "C", "TZ": "UTC"}
    if owner is not None:
        env["HOME"] = str(base)
    data = base / "data"
    log_dir.mkdir(parents=True, exist_ok=True)
    superuser = "postgres"
    proc: Proc | None = None
    try:
        init = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D", str(data),
                "-U", superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            env=env,
            cwd=base,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **as_owner,
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr[-3000:]}")
        port = free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": "",  # TCP only; nothing outside the cluster's dir
            "max_connections": "200",
            "fsync": "on" if fsync else "off",
            "synchronous_commit": "on" if fsync else "off",
        }
        log = log_dir / "postgres.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    *(arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")),
                ],
                env=env,
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                **as_owner,
            )
        proc = Proc("postgres", popen, log)
        over_tcp = ["-h", "127.0.0.1", "-p", str(port), "-U", superuser]

        def ready() -> bool:
            probe = subprocess.run(
                [str(bindir / "pg_isready"), "-q", *over_tcp, "-d", "postgres"],
                env=env,
                capture_output=True,
                timeout=10,
                check=False,
            )
            return probe.returncode == 0

        _wait("PostgreSQL to accept connections", ready, PG_START_TIMEOUT, [proc])
        created = subprocess.run(
            [str(bindir / "createdb"), *over_tcp, DATABASE],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed: {created.stderr}\n{proc.tail()}")
        yield Postgres(port=port, user=superuser, database=DATABASE, proc=proc)
    finally:
        if proc is not None:
            # SIGINT is PostgreSQL's "fast" shutdown (SIGTERM waits for clients).
            proc.stop(signals=(signal.SIGINT,), grace=20)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A PostgreSQL cluster for this test module; missing PostgreSQL fails the test
    with what to install (a skip would hide it, and CI forbids skips)."""
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(
                running_postgres(tmp_path_factory.mktemp("postgres"), fsync=False)
            )
        except (PostgresUnavailable, RuntimeError) as exc:
            pytest.fail(f"PostgreSQL is needed for this test: {exc}")
        yield pg


@pytest.fixture(scope="module")
def postgres_prefect_server(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectServer]:
    """``prefect server start`` with its database on ``postgres``."""
    base = tmp_path_factory.mktemp("prefect-server-pg")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_prefect_server(base, database_url=postgres.url))
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{postgres.proc.tail()}")
        yield server
