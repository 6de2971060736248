"""Builds of one app at the same time never lose each other's output.

They all ask for the same ``--output``; each run keeps its tarball in the image
store under its content hash and reports that file, so every report names a file
holding the image it reports, and the requested path holds one whole image.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.image_store import file_sha256
from tasks.oci_layout import image_digests
from tests.dagger_test_engine.server import TestEngine
from tests.oci_check import inspect_config
from tests.prefect_fixtures import PrefectAPI

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ["7.0.1", "7.0.2", "7.0.3"]


def test_simultaneous_cli_builds_of_one_app_keep_every_reported_tarball(
    prefect_api: PrefectAPI, dagger_cli_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shared" / "hello.oci.tar"
    env = {**os.environ, **prefect_api.env}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.build", str(hello_go), "--version", version,
             "--output", str(out), "--no-checks"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for version in VERSIONS
    ]  # fmt: skip
    reported: dict[str, tuple[Path, str]] = {}
    for version, proc in zip(VERSIONS, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        tarball, digest = stdout.split()[-2:]
        reported[version] = (Path(tarball), digest)

    assert len({t for t, _ in reported.values()}) == len(VERSIONS)  # one file per image
    for version, (tarball, digest) in reported.items():
        assert image_digests(tarball)[0] == digest  # the file holds the image reported
        labels = inspect_config(f"oci-archive:{tarball}")["config"]["Labels"]
        assert labels["org.opencontainers.image.version"] == version
    # The requested path is one whole image: one of theirs, byte for byte.
    assert file_sha256(out) in {file_sha256(t) for t, _ in reported.values()}
    leftovers = [p.name for p in out.parent.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    assert leftovers == []


def test_simultaneous_builds_in_one_process_share_one_dagger_session(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    hello_go: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A parent flow that gathers the builds of several services runs them in one
    process, where dagger-io has one connection: each run used to connect it on
    its own (racing: "Transport is already connected") and the first to finish
    closed it under the others. They now share one session while they overlap
    (how much they overlap depends on the API's timing; the test below forces it)."""
    from flows.build import multistage_build

    monkeypatch.setenv("GOBUILD_ENGINE_LIMIT", "gobuild-one-process")
    monkeypatch.setenv("GOBUILD_ENGINE_CONCURRENCY", "3")

    async def together() -> list:
        return await asyncio.gather(
            *(
                multistage_build(
                    source=str(hello_go),
                    version=f"9.0.{i}",
                    output=str(tmp_path / f"s{i}.tar"),
                    run_checks=False,
                    force_rebuild=True,
                    return_state=True,
                )
                for i in range(3)
            )
        )

    states = asyncio.run(together())
    for state in states:
        assert state.is_completed(), state.message
    for i, state in enumerate(states):
        tarball = state.result().tarball
        labels = inspect_config(f"oci-archive:{tarball}")["config"]["Labels"]
        assert labels["org.opencontainers.image.version"] == f"9.0.{i}"
    from tasks import session

    assert session._SHARED is None  # closed after the last run left


def test_runs_of_one_process_connect_once_and_the_first_to_leave_closes_nothing(
    dagger_engine: TestEngine,
) -> None:
    """The session level of the test above, with the overlap forced: two runs
    enter at once, the first leaves while the second still queries."""
    from dagger import dag

    from tasks import session

    async def scenario() -> str:
        first = session.engine_session()
        second = session.engine_session()
        await asyncio.gather(first.__aenter__(), second.__aenter__())
        await dag.version()
        await first.__aexit__(None, None, None)
        still = await dag.version()  # the second run's session is still open
        await second.__aexit__(None, None, None)
        return still

    if isinstance(dagger_engine, TestEngine):
        dagger_engine.log.clear()
    assert asyncio.run(scenario())
    assert session._SHARED is None
    if isinstance(dagger_engine, TestEngine):
        requests = dagger_engine.log.snapshot()["requests"]
        introspections = [r for r in requests if r["paths"][:1] == ["__schema.queryType.name"]]
        assert len(introspections) == 1


def test_a_build_in_another_live_event_loop_is_refused_and_a_dead_loop_forgotten(
    dagger_engine: TestEngine,
) -> None:
    """dagger-io's one connection is bound to the loop that opened it: a run in a
    second loop of the process (another thread) gets a one-line reason while the
    first holds it, and a loop that died with runs inside does not block later runs."""
    import threading

    from dagger import dag

    from tasks import session
    from tasks.preflight import EngineUnavailable

    holding, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        async def hold() -> None:
            async with session.engine_session():
                holding.set()
                await asyncio.to_thread(release.wait, 60)

        asyncio.run(hold())

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert holding.wait(60)

        async def second() -> None:
            async with session.engine_session():
                pass

        with pytest.raises(EngineUnavailable, match="in use by a build in another event loop"):
            asyncio.run(second())
    finally:
        release.set()
        thread.join(60)
    assert session._SHARED is None

    # A loop that closed with a run still counted in its session (killed mid-build).
    dead = asyncio.new_event_loop()
    stale = session.SharedSession(dead, after=None)
    stale.users = 1
    dead.close()
    session._SHARED = stale

    async def later() -> str:
        async with session.engine_session():
            return await dag.version()

    assert asyncio.run(later())
    assert session._SHARED is None
