"""Which failures are retried, and how a missing engine is explained."""

from __future__ import annotations

import types
from pathlib import Path

import dagger
import pytest
from dagger._exceptions import QueryErrorValue

from tasks.session import EngineUnavailable, is_transient, preflight

REQUEST = types.SimpleNamespace(document=None)


def query_error(message: str, **extensions) -> dagger.QueryError:
    return dagger.QueryError([QueryErrorValue(message, extensions=extensions)], REQUEST)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (dagger.TransportError("Unexpected response from engine: 500"), True),
        (query_error("failed to push r:1: unexpected status: 503 Service Unavailable"), True),
        (query_error("failed to push r:1: 429 Too Many Requests (Retry-After: 1)"), True),
        (query_error("failed to do request: ConnectError: connection refused"), True),
        (query_error("failed to push: read: connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (query_error("failed to push r:1: authorization failed: 401 Unauthorized"), False),
        (query_error("failed to push r:1: 403 Forbidden: denied"), False),
        (query_error("address: invalid reference format: 'Bad Ref'"), False),
        (
            query_error(
                "process did not complete",
                _type="EXEC_ERROR",
                cmd=["go", "build"],
                exitCode=1,
                stdout="",
                stderr="undefined: x",
            ),
            False,
        ),
        (ValueError("tag_commit needs a commit hash"), False),
        (EngineUnavailable("no engine"), False),
        (RuntimeError("something else"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_exec_error_is_never_transient_even_with_a_timeout_in_its_text() -> None:
    exc = query_error(
        "process timed out",
        _type="EXEC_ERROR",
        cmd=["go", "test"],
        exitCode=1,
        stdout="",
        stderr="panic: test timed out after 10m0s",
    )
    assert isinstance(exc, dagger.ExecError)
    assert not is_transient(exc)


def test_preflight_without_any_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (
        "DAGGER_SESSION_PORT",
        "DAGGER_SESSION_TOKEN",
        "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
        "_EXPERIMENTAL_DAGGER_CLI_BIN",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineUnavailable, match="container runtime such as Docker"):
        preflight()
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_RUNNER_HOST", "tcp://engine:1234")
    preflight()  # a remote engine is the CLI's business: no local check
    monkeypatch.delenv("_EXPERIMENTAL_DAGGER_RUNNER_HOST")
    monkeypatch.setenv("DAGGER_SESSION_PORT", "1")
    with pytest.raises(EngineUnavailable, match="DAGGER_SESSION_TOKEN"):
        preflight()
