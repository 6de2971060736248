"""Pytest fixtures that put the Dagger test engine behind the real SDK.

One engine serves the whole test session, so Go's module and build caches (its
cache volumes) stay warm between tests the way they do on a real engine; each
test gets a clean query log and no fault rules.

``dagger_engine`` gives each test a fresh client session of that engine through
``DAGGER_SESSION_PORT``/``DAGGER_SESSION_TOKEN``, like running it under its own
``dagger run``: registry credentials and host-directory reads do not leak
between tests, and a test whose session was dropped does not break the next.

``dagger_cli_engine`` instead lets the SDK start sessions itself, through
``_EXPERIMENTAL_DAGGER_CLI_BIN`` (``dagger_cli_bin``, a wrapper around ``cli.py``):
every ``dagger.connection()`` then opens a new session, as with the real CLI, so
a retry after a dropped session can reconnect.

With ``GOBUILD_TEST_ENGINE=real`` (``tests/real_engine.py``) both give a
``RealEngine`` instead and the SDK reaches the real engine; the fixtures of the
test double itself (``test_engine_session``, ``dagger_cli_bin``) then fail the
test that asks for them.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real_engine import RealEngine, real_lane, without_session_vars

from .server import TestEngine


@pytest.fixture(scope="session")
def test_engine_session(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestEngine]:
    if real_lane(request.config):
        pytest.fail(
            "GOBUILD_TEST_ENGINE=real: this test uses the Dagger test engine itself; "
            "a test marked real_engine may use only the SDK and dagger_engine/dagger_cli_engine"
        )
    te = TestEngine(tmp_path_factory.mktemp("dagger-test-engine"), workdir=Path.cwd()).start()
    yield te
    te.stop()


@pytest.fixture
def dagger_engine(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestEngine | RealEngine]:
    """The running test engine and a new session of it, with
    DAGGER_SESSION_PORT/TOKEN set for the SDK (``dagger_engine.env``); in the
    real lane a ``RealEngine``, and nothing set for the SDK."""
    if real_lane(request.config):
        with without_session_vars(monkeypatch):
            yield RealEngine()
        return
    test_engine_session: TestEngine = request.getfixturevalue("test_engine_session")
    test_engine_session.renew_default_session()
    monkeypatch.delenv("_EXPERIMENTAL_DAGGER_CLI_BIN", raising=False)
    for key, value in test_engine_session.env.items():
        monkeypatch.setenv(key, value)
    test_engine_session.clear_faults()
    test_engine_session.log.clear()
    yield test_engine_session
    test_engine_session.clear_faults()


@pytest.fixture(scope="session")
def dagger_cli_bin(
    test_engine_session: TestEngine, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An executable standing in for the ``dagger`` CLI: ``<bin> session …``
    prints a new session of the running test engine and ends it when stdin
    closes (``cli.py``)."""
    base = tmp_path_factory.mktemp("dagger-cli")
    token_file = base / "admin-token"
    token_file.write_text(test_engine_session.admin_token)
    token_file.chmod(0o600)
    root = Path(__file__).resolve().parents[2]
    script = base / "dagger"
    script.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f"exec {shlex.quote(sys.executable)} -m tests.dagger_test_engine.cli"
        f" --engine http://127.0.0.1:{test_engine_session.port}"
        f" --admin-token-file {shlex.quote(str(token_file))} \"$@\"\n"
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def dagger_cli_engine(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestEngine | RealEngine]:
    """The running test engine, reached the way the SDK reaches a real one
    without ``dagger run``: ``_EXPERIMENTAL_DAGGER_CLI_BIN`` is set and the
    session variables are not, so each ``dagger.connection()`` starts a new
    session (``dagger session`` with the client's working directory). In the
    real lane a ``RealEngine``: the SDK's own CLI does exactly that."""
    monkeypatch.delenv("DAGGER_SESSION_PORT", raising=False)
    monkeypatch.delenv("DAGGER_SESSION_TOKEN", raising=False)
    if real_lane(request.config):
        yield RealEngine()
        return
    test_engine_session: TestEngine = request.getfixturevalue("test_engine_session")
    dagger_cli_bin: Path = request.getfixturevalue("dagger_cli_bin")
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_CLI_BIN", str(dagger_cli_bin))
    test_engine_session.clear_faults()
    test_engine_session.log.clear()
    yield test_engine_session
    test_engine_session.clear_faults()


@pytest.fixture
def hello_go() -> Path:
    return Path(__file__).resolve().parents[2] / "examples" / "hello-go"
