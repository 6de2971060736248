"""Pytest fixtures that put the Dagger test engine behind the real SDK.

One engine serves the whole test session, so Go's module and build caches (its
cache volumes) stay warm between tests the way they do on a real engine; each
test gets a clean query log and no fault rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import TestEngine


@pytest.fixture(scope="session")
def test_engine_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestEngine]:
    te = TestEngine(tmp_path_factory.mktemp("dagger-test-engine")).start()
    yield te
    te.stop()


@pytest.fixture
def dagger_engine(
    test_engine_session: TestEngine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestEngine]:
    """The running test engine, with DAGGER_SESSION_PORT/TOKEN set for the SDK."""
    for key, value in test_engine_session.env.items():
        monkeypatch.setenv(key, value)
    test_engine_session.clear_faults()
    test_engine_session.log.clear()
    yield test_engine_session
    test_engine_session.clear_faults()


@pytest.fixture
def hello_go() -> Path:
    return Path(__file__).resolve().parents[2] / "examples" / "hello-go"
