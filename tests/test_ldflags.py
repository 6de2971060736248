"""Placeholders in ``ldflags``: the commit and its time stamped into the binary,
a new commit of the same files rebuilt (its stamp differs), the clock refused
(it would make every build differ), and GoReleaser's ``{{.Commit}}`` refused with
the spelling to write, since ``prefect deploy`` would blank it
(``tasks/ldflags.py``)."""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

import pytest

from flows.build import parse_args
from tasks.ldflags import check_ldflags, expand, stamp_values
from tasks.params import ParamsError, parse_params
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import artifacts, build
from tests.gitrepo import commit_all, git
from tests.oci_check import extract_file
from tests.prefect_fixtures import PrefectAPI
from tests.trees import write_tree

STAMPED_MAIN = """package main

import "fmt"

var (
\tversion = "dev"
\tcommit  = "none"
\tshort   = "none"
\tdate    = "unknown"
\tepoch   = "0"
)

func main() { fmt.Println(version, commit, short, date, epoch) }
"""
FLAGS = (
    "-X main.commit=${COMMIT} -X main.short=${SHORT_COMMIT} "
    "-X main.date=${COMMIT_DATE} -X main.epoch=${COMMIT_TIMESTAMP}"
)


def test_placeholders_expand_and_unknown_ones_are_refused() -> None:
    values = stamp_values("1.2.3", "0123456789abcdef", "2026-11-28T04:00:00Z", 1795838400)
    assert expand("-X main.v=${VERSION} -X main.c=${SHORT_COMMIT} -X main.p=a$$b", values) == (
        "-X main.v=1.2.3 -X main.c=0123456 -X main.p=a$b"
    )
    assert stamp_values("dev", "", "", 0)["COMMIT"] == "unknown"
    assert check_ldflags(FLAGS) == FLAGS
    for bad, words in (
        ("-X main.date=${DATE}", "${DATE} would stamp the clock"),
        ("-X main.x=${BRANCH}", "unknown placeholder ${BRANCH}; known: ${VERSION}, ${COMMIT}"),
        ("-X main.x=$COMMIT", "a '$' starts a placeholder such as ${COMMIT} (write $$ for"),
        ("-X main.x=a$", "a '$' starts a placeholder"),
        (
            "-X main.x={{.Commit}}",
            "{{.Commit}}: Prefect's deployment templating owns {{ }} "
            "and would blank it; write ${COMMIT}",
        ),
        ("-X main.x={{ .ShortCommit }}", "write ${SHORT_COMMIT}"),
        ("-X main.x={{.Date}}", "{{.Date}} would stamp the clock"),
        ("-X main.x={{.Env.FOO}}", "placeholders are ${VERSION}"),
        ("-X 'main.x=a b'", "must not contain quotes"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)):
            check_ldflags(bad)


def test_prefect_deploy_would_blank_goreleaser_s_spelling_but_not_ours() -> None:
    """Why ``{{.Commit}}`` is refused: the templating ``prefect deploy`` applies to
    a prefect.yaml's parameters (unknown placeholders become '')."""
    from prefect.utilities.templating import apply_values

    assert apply_values({"ldflags": "-X main.c={{.Commit}}"}, {}) == {"ldflags": "-X main.c="}
    assert apply_values({"ldflags": FLAGS}, {}) == {"ldflags": FLAGS}


def test_a_bad_placeholder_is_refused_as_the_ldflags_parameter(hello_go: Path) -> None:
    with pytest.raises(ParamsError, match=r"^ldflags: \$\{DATE\} would stamp the clock"):
        parse_params({"source": str(hello_go), "ldflags": "-X main.date=${DATE}"})


def test_the_command_line_takes_ldflags_and_the_version_variable(hello_go: Path) -> None:
    values = parse_args([str(hello_go), f"--ldflags={FLAGS}", "--version-variable", "main.release"])
    params = parse_params(values)
    assert params.ldflags == FLAGS and params.version_variable == "main.release"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="runs an x86_64 binary")
def test_the_commit_and_its_time_are_stamped_and_a_new_commit_rebuilds(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    repo = write_tree(
        tmp_path / "stamped",
        {"go.mod": "module example.com/stamped\n\ngo 1.22\n", "main.go": STAMPED_MAIN},
    )
    first = commit_all(repo, "one")

    def built(flags: str, n: int) -> list[str]:
        out = tmp_path / f"s{n}.tar"
        state = build(
            source=str(repo), version="1.2.3", ldflags=flags, run_checks=False, output=str(out)
        )
        assert state.is_completed(), state.message
        binary = extract_file(f"oci-archive:{out}", "/usr/local/bin/stamped", tmp_path / f"b{n}")
        return subprocess.run(
            [str(binary)], capture_output=True, text=True, check=True
        ).stdout.split()

    def go_builds() -> int:
        return sum(e[:2] == ["go", "build"] for e in dagger_engine.log.snapshot()["execs"])

    date = git(repo, "log", "-1", "--format=%cI")
    epoch = git(repo, "log", "-1", "--format=%ct")
    assert built(FLAGS, 1) == ["1.2.3", first, first[:7], date, epoch]

    # A new commit of the same files: their digest is the same, the stamp is not.
    git(repo, "commit", "-q", "--allow-empty", "-m", "two")
    second = git(repo, "rev-parse", "HEAD")
    before = go_builds()
    assert built(FLAGS, 2)[1] == second
    assert go_builds() == before + 1

    # Without placeholders the commit is not in the binary, so the next empty commit
    # changes nothing: the compile is served from Prefect's cache.
    assert built("", 3)[1] == "none"
    git(repo, "commit", "-q", "--allow-empty", "-m", "three")
    before = go_builds()
    assert built("", 4)[1] == "none"
    assert go_builds() == before


FLAG_VERSION_MAIN = """package main

import (
\t"flag"
\t"fmt"
)

var (
	version = flag.Bool("version", false, "print the version")
	verbose = flag.Bool("v", false, "say more")
)

func main() { flag.Parse(); fmt.Println("served", *version, *verbose) }
"""


def test_a_program_whose_main_version_is_no_string_builds_unstamped_with_a_note(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    """golang/example's outyet has ``var version = flag.String(...)``: the linker
    refuses -X on it, and main.version is this tool's default, not the program's
    choice, so the build goes on without that stamp and says so. A variable the
    user named fails once, with the hint."""
    from tests.flowruns import run_logs

    repo = write_tree(
        tmp_path / "flagged",
        {"go.mod": "module example.com/flagged\n\ngo 1.22\n", "main.go": FLAG_VERSION_MAIN},
    )
    out = tmp_path / "f.tar"
    state = build(source=str(repo), version="1.2.3", run_checks=False, output=str(out))
    assert state.is_completed(), state.message
    binary = extract_file(f"oci-archive:{out}", "/usr/local/bin/flagged", tmp_path / "bin")
    run = subprocess.run([str(binary)], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "served false false"
    logs = run_logs(state.state_details.flow_run_id)
    assert any(
        "main.version in this program is not a string variable" in line
        and "built without the version stamp" in line
        for line in logs
    ), logs
    go_builds = [e for e in dagger_engine.log.snapshot()["execs"] if e[:2] == ["go", "build"]]
    assert [("-X main.version=1.2.3" in " ".join(e)) for e in go_builds] == [True, False]

    named = build(
        source=str(repo),
        version="1.2.4",
        version_variable="main.verbose",
        run_checks=False,
        output=str(tmp_path / "g.tar"),
    )
    assert named.is_failed()
    exc = named.result(raise_on_failure=False)
    assert "main.verbose: cannot set with -X: not a var of type string" in exc.stderr
    arts = {a.key: a for a in artifacts(named.state_details.flow_run_id) if a.key}
    assert "Hint: main.verbose is not a string variable" in arts["build-flagged-failure"].data


def test_a_variable_the_user_named_that_is_no_string_gets_the_hint() -> None:
    from tasks.gohints import go_hint

    stderr = (
        "# example.com/flagged\n"
        "main.Version: cannot set with -X: not a var of type string (type:*string)\n"
    )
    hint = go_hint(stderr, builder_image="golang:1.27.3", go_auth_secret_block="")
    assert hint.startswith("main.Version is not a string variable in this program")
    assert "version_variable" in hint
