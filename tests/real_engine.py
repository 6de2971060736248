"""The real-engine lane: the tests marked ``real_engine`` against a REAL Dagger engine.

    GOBUILD_TEST_ENGINE=real bash scripts/test.sh      # or: pytest --engine=real

By default (``GOBUILD_TEST_ENGINE`` unset or ``test``) every test runs against the
test engine in ``tests/dagger_test_engine/``, marked ``real_engine`` or not. In the
real lane:

* tests NOT marked ``real_engine`` are deselected (reported as deselected, never as
  skipped): they use the test double's own controls (query log, faults, sessions,
  its Python directly);
* ``dagger_engine`` and ``dagger_cli_engine`` give a :class:`RealEngine`, which has
  no test-double features. Nothing is set for the SDK, and a ``dagger run``
  session's ``DAGGER_SESSION_PORT``/``DAGGER_SESSION_TOKEN`` are removed, so every
  ``dagger.connection()`` starts its own session through the SDK's Dagger CLI, as
  the tests expect: the CLI provisions an engine with the first container runtime
  on PATH (Docker), or uses ``_EXPERIMENTAL_DAGGER_RUNNER_HOST`` or
  ``_EXPERIMENTAL_DAGGER_CLI_BIN`` when the user set them;
* before the first test the product's own ``tasks.preflight.preflight()`` checks
  that such an engine can be reached; if not, the run stops at once with its
  one-line message and a non-zero exit status (never a skip).

The registry and git servers of the tests listen on 127.0.0.1, which the engine
reaches only when it shares the host's network (see README.md, "Running the tests
against a real Dagger engine").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import pytest

from tests.dagger_test_engine.server import TestEngine

LANE_ENV = "GOBUILD_TEST_ENGINE"
LANES = ("test", "real")
MARKER = "real_engine"
SESSION_VARS = ("DAGGER_SESSION_PORT", "DAGGER_SESSION_TOKEN")

_lane_key = pytest.StashKey[str]()


class RealEngine:
    """Whatever real Dagger engine the SDK reaches. It has no log, faults or
    sessions to inspect: a test that uses it sees the engine only through the SDK,
    as the product does."""

    is_real: ClassVar[bool] = True

    def __repr__(self) -> str:
        via = os.environ.get("_EXPERIMENTAL_DAGGER_RUNNER_HOST") or os.environ.get(
            "_EXPERIMENTAL_DAGGER_CLI_BIN", "the SDK's Dagger CLI"
        )
        return f"RealEngine(via={via!r})"


# What the engine fixtures give: a marked test may use only what both have
# (``is_real``), and the SDK.
Engine = TestEngine | RealEngine


def real_lane(config: pytest.Config) -> bool:
    return config.stash.get(_lane_key, "test") == "real"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        choices=LANES,
        default=None,
        help=f"which Dagger engine the tests use: the test engine (default) or the real one; "
        f"same as {LANE_ENV}=real|test. With 'real' only the tests marked '{MARKER}' run.",
    )


def pytest_configure(config: pytest.Config) -> None:
    chosen = config.getoption("--engine", default=None)
    if chosen:
        os.environ[LANE_ENV] = chosen  # the same switch, for anything started from here
    lane = os.environ.get(LANE_ENV, "").strip().lower() or "test"
    if lane not in LANES:
        raise pytest.UsageError(f"{LANE_ENV}={os.environ[LANE_ENV]!r}: expected 'test' or 'real'")
    config.stash[_lane_key] = lane


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not real_lane(config):
        return
    selected = [item for item in items if item.get_closest_marker(MARKER)]
    deselected = [item for item in items if not item.get_closest_marker(MARKER)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@contextmanager
def without_session_vars(monkeypatch: pytest.MonkeyPatch | None = None) -> Iterator[None]:
    """No ``dagger run`` session: the SDK starts its own sessions through its CLI."""
    if monkeypatch is not None:
        for key in SESSION_VARS:
            monkeypatch.delenv(key, raising=False)
        yield
        return
    saved = {key: os.environ.pop(key) for key in SESSION_VARS if key in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """In the real lane, find the engine before the first test, with the product's
    own preflight; stop the whole run at once, in one line, when there is none."""
    if not real_lane(session.config) or session.config.option.collectonly or not session.items:
        return
    from tasks.preflight import EngineUnavailable, preflight

    try:
        with without_session_vars():
            preflight()
    except EngineUnavailable as exc:
        pytest.exit(f"{LANE_ENV}=real: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
