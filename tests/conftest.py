"""Shared pytest configuration.

With ``FORBID_SKIPS=1`` (set by ``.ci/run``) a run that skipped any test fails, so a
missing tool on CI cannot quietly turn tests into skips.

``GOBUILD_TEST_ENGINE=real`` (or ``--engine=real``) runs only the tests marked
``real_engine``, against a real Dagger engine (``tests/real_engine.py``).
"""

from __future__ import annotations

import os

# Before any project module is imported: stage retry delays are read at import.
os.environ.setdefault("GOBUILD_RETRY_BASE_SECONDS", "0.2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _forbid_skips() -> bool:
    return os.environ.get("FORBID_SKIPS") == "1"


def _skipped(config) -> list:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return []
    return reporter.stats.get("skipped", [])


def _skip_reason(report) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = _skipped(config)
    if not (_forbid_skips() and skipped):
        return
    terminalreporter.section("FORBID_SKIPS=1: skipped tests fail this run", red=True)
    for report in skipped:
        terminalreporter.line(f"SKIPPED {report.nodeid}: {_skip_reason(report)}", red=True)
    terminalreporter.line(
        f"{len(skipped)} test(s) skipped; with FORBID_SKIPS=1 every test must run.", red=True
    )


def pytest_sessionfinish(session, exitstatus):
    if _forbid_skips() and _skipped(session.config) and session.exitstatus == 0:
        session.exitstatus = 1


from tests.dagger_test_engine.pytest_plugin import (  # noqa: E402, F401 - fixtures
    dagger_cli_bin,
    dagger_cli_engine,
    dagger_engine,
    hello_go,
    test_engine_session,
)
from tests.git_servers import git_daemon, git_http, git_http_auth  # noqa: E402, F401 - fixtures
from tests.prefect_fixtures import prefect_api  # noqa: E402, F401 - fixtures
from tests.real_engine import (  # noqa: E402, F401 - the real-engine lane's hooks
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtestloop,
)
from tests.registry_fixtures import auth_registry, fault_proxy, registry  # noqa: E402, F401
from tests.server_fixtures import engine_process, prefect_server, served  # noqa: E402, F401
