"""A failed go command whose fix is known gets a one-line hint after Go's own
words, on the terminal and in the failure artifact; any other failure gets none.

The go.mod refusal (``tests/test_goversion.py``), a fetch without credentials and
an untidy go.sum (``tests/test_go_modules.py``) are checked where their fixtures
live; this file holds the cgo case and the cases with no hint."""

from __future__ import annotations

from pathlib import Path

import dagger

from flows.build import failure_summary
from tasks.gohints import go_hint
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import artifacts, build, events
from tests.prefect_fixtures import PrefectAPI
from tests.trees import write_tree

CGO_MAIN = """package main

// #include <stdio.h>
import "C"

func main() { C.puts(C.CString("hello from C")) }
"""


def test_a_cgo_only_program_fails_with_the_hint_that_builds_are_static(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    src = write_tree(
        tmp_path / "cgo-app",
        {"go.mod": "module example.com/cgoapp\n\ngo 1.22\n", "main.go": CGO_MAIN},
    )
    state = build(source=str(src), run_checks=False, output=str(tmp_path / "c.tar"))
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, dagger.ExecError), exc
    assert "build constraints exclude all Go files in" in exc.stderr  # Go's own words
    hint = failure_summary(exc).splitlines()[-1]
    assert hint.startswith("hint: no Go file in ")
    assert "builds for the target platform with CGO_ENABLED=0" in hint
    arts = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    assert "Hint: no Go file in " in arts["build-cgo-app-failure"].data
    failed = events("gobuild.build.failed", {"app": "cgo-app"})
    assert failed and failed[0].payload["hint"] == hint.removeprefix("hint: ")


def test_a_compile_error_gets_no_hint(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    src = write_tree(
        tmp_path / "typo-app",
        {
            "go.mod": "module example.com/typo\n\ngo 1.22\n",
            "main.go": "package main\n\nfunc main() { undefinedThing() }\n",
        },
    )
    state = build(source=str(src), run_checks=False, output=str(tmp_path / "t.tar"))
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, dagger.ExecError), exc
    assert not any(line.startswith("hint:") for line in failure_summary(exc).splitlines())
    arts = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    assert "Hint:" not in arts["build-typo-app-failure"].data


def test_refused_credentials_name_the_block_that_holds_them() -> None:
    stderr = (
        "go: example.com/private@v1.1.0: reading https://127.0.0.1:4443/example.com/private/"
        "@v/v1.1.0.info: 401 Unauthorized\n"
    )
    given = go_hint(stderr, builder_image="golang:1.27.3", go_auth_secret_block="corp-netrc")
    assert given == (
        "the module host refused the credentials of go_auth_secret_block 'corp-netrc': "
        "check its .netrc machine, login and token"
    )
    none = go_hint(stderr, builder_image="golang:1.27.3", go_auth_secret_block="")
    assert none.startswith("a module needs credentials: set go_auth_secret_block")
