"""A failed go command whose fix is known gets a one-line hint after Go's own
words, on the terminal and in the failure artifact; any other failure gets none.

The go.mod refusal (``tests/test_goversion.py``), a fetch without credentials and
an untidy go.sum (``tests/test_go_modules.py``) are checked where their fixtures
live; this file holds the cgo case, a ``//go:embed`` of files git ignores, go
vet's findings, tests that need a service the builder does not run, and the
cases with no hint."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import dagger
import pytest

from flows.build import failure_summary, parse_args
from tasks.gohints import go_hint
from tasks.params import ParamsError, parse_params
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import artifacts, build, events, run_logs
from tests.git_servers import GitDaemon
from tests.gitrepo import commit_all
from tests.oci_check import extract_file
from tests.prefect_fixtures import PrefectAPI
from tests.registry_fixtures import free_port
from tests.trees import write_tree

CGO_MAIN = """package main

// #include <stdio.h>
import "C"

func main() { C.puts(C.CString("hello from C")) }
"""


def failed_command(state: Any) -> tuple[dagger.ExecError, str]:
    """The failed go command of a build, and the last line the CLI prints for it
    (the hint, when there is one)."""
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, dagger.ExecError), exc
    return exc, failure_summary(exc).splitlines()[-1]


def test_a_cgo_only_program_is_refused_first_or_fails_with_the_hint_that_builds_are_static(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    """A local module's files say it before any engine work (tasks/goconstraints.py);
    a git source's only the engine sees, so go's failure gets the hint."""
    src = write_tree(
        tmp_path / "cgo-app",
        {"go.mod": "module example.com/cgoapp\n\ngo 1.22\n", "main.go": CGO_MAIN},
    )
    with pytest.raises(ParamsError, match=r'^main_package: .*main\.go: imports "C", and cgo'):
        parse_params({"source": str(src)})
    commit_all(src, "init")
    git_daemon.add_repo("cgo-app", src)
    state = build(
        source=git_daemon.url("cgo-app"),
        version="1.0.0",
        run_checks=False,
        output=str(tmp_path / "c.tar"),
    )
    assert state.is_failed()
    exc, hint = failed_command(state)
    assert "build constraints exclude all Go files in" in exc.stderr  # Go's own words
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
    _, last = failed_command(state)  # a hint would be the last line
    assert not last.startswith("hint:")
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


def test_tests_that_need_a_service_get_the_hint_to_skip_them_in_short_mode(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    """An integration test that dials a database the builder does not run: Go's
    own net error, printed by the test on stdout, gives the hint, and the hint's
    GOFLAGS=-short lets a test that honours testing.Short() skip."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    src = write_tree(
        tmp_path / "db-app",
        {
            "go.mod": "module example.com/dbapp\n\ngo 1.22\n",
            "main.go": "package main\n\nfunc main() {}\n",
            "db_test.go": (
                'package main\n\nimport (\n\t"net"\n\t"testing"\n)\n\n'
                "func TestStore(t *testing.T) {\n"
                '\tif testing.Short() {\n\t\tt.Skip("needs the database")\n\t}\n'
                f'\tconn, err := net.Dial("tcp", "{address}")\n'
                "\tif err != nil {\n\t\tt.Fatal(err)\n\t}\n\tconn.Close()\n}\n"
            ),
        },
    )
    state = build(source=str(src), output=str(tmp_path / "d.tar"))
    exc, hint = failed_command(state)
    assert exc.command[:2] == ["go", "test"]
    assert f"dial tcp {address}: connect: connection refused" in exc.stdout  # Go's words
    assert hint.startswith(f"hint: the tests could not reach {address}, a service")
    assert hint.endswith("or set run_checks to false")
    arts = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    assert f"Hint: the tests could not reach {address}" in arts["build-db-app-failure"].data

    state = build(source=str(src), go_env={"GOFLAGS": "-short"}, output=str(tmp_path / "d.tar"))
    assert state.is_completed(), state.message


def test_the_service_hint_reads_only_a_go_test_s_own_output() -> None:
    lookup = (
        "--- FAIL: TestAPI\n    api_test.go:9: dial tcp: lookup db on 10.0.0.2:53: no such host\n"
    )
    hint = go_hint(
        "",
        builder_image="golang:1.27.3",
        go_auth_secret_block="",
        command=["go", "test", "./..."],
        stdout=lookup,
    )
    assert hint.startswith("the tests could not reach db, a service the builder does not run")
    # The same words from another command, or on go's own stderr, are not the tests'.
    for command, stdout, stderr in (
        (["go", "build", "-o", "/out/app", "."], lookup, ""),
        (["go", "test", "./..."], "", "dial tcp: lookup proxy.golang.org: no such host"),
    ):
        assert (
            go_hint(
                stderr,
                builder_image="golang:1.27.3",
                go_auth_secret_block="",
                command=command,
                stdout=stdout,
            )
            == ""
        )


EMBED_MAIN = """package main

import (
\t"embed"
\t"fmt"
)

//go:embed all:dist
var dist embed.FS

func main() {
\tpage, _ := dist.ReadFile("dist/index.html")
\tfmt.Print(string(page))
}
"""


def test_an_embed_of_files_git_ignores_gets_the_hint_and_builds_without_gitignore(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    """The common Go + web app shape: ``dist/`` is built in the checkout, ignored
    by git, and embedded. Sent as git would commit it, Go finds no files, and the
    hint names use_gitignore; with it off the page is in the binary."""
    repo = write_tree(
        tmp_path / "webapp",
        {
            "go.mod": "module example.com/webapp\n\ngo 1.22\n",
            "main.go": EMBED_MAIN,
            ".gitignore": "dist/\n",
        },
    )
    commit_all(repo, "app")
    write_tree(repo, {"dist/index.html": "<h1>built by npm</h1>"})

    state = build(source=str(repo), run_checks=False, output=str(tmp_path / "w1.tar"))
    exc, hint = failed_command(state)
    assert "pattern all:dist: no matching files found" in exc.stderr  # Go's own words
    assert hint.startswith("hint: //go:embed all:dist found no files in the source")
    assert "set use_gitignore to false" in hint

    out = tmp_path / "w2.tar"
    values = parse_args([str(repo), "--no-gitignore", "--no-checks", "--output", str(out)])
    state = build(**values)
    assert state.is_completed(), state.message
    binary = extract_file(f"oci-archive:{out}", "/usr/local/bin/webapp", tmp_path / "bin")
    page = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    assert page == "<h1>built by npm</h1>"


def test_use_gitignore_off_is_refused_for_a_git_url() -> None:
    with pytest.raises(ParamsError, match=r"^use_gitignore: false, but source .* is a git URL"):
        parse_params({"source": "https://git.example.com/org/app.git", "use_gitignore": False})


COPYLOCK_MAIN = """package main

import (
\t"fmt"
\t"sync"
)

type counter struct {
\tmu sync.Mutex
\tn  int
}

func show(c counter) { fmt.Println(c.n) }

func main() { show(counter{n: 1}) }
"""


def test_go_vet_findings_get_the_hint_and_run_vet_off_keeps_go_test(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    """Code that builds and passes go test, where go vet's copylocks analyzer (not
    among the checks go test runs) finds a lock passed by value."""
    src = write_tree(
        tmp_path / "vet-app",
        {
            "go.mod": "module example.com/vetapp\n\ngo 1.22\n",
            "main.go": COPYLOCK_MAIN,
            "main_test.go": (
                'package main\n\nimport "testing"\n\n'
                "func TestShow(t *testing.T) { show(counter{}) }\n"
            ),
        },
    )
    state = build(source=str(src), output=str(tmp_path / "v1.tar"))
    exc, hint = failed_command(state)
    assert exc.command[:2] == ["go", "vet"]
    assert "passes lock by value" in exc.stderr  # go vet's own words
    assert hint.startswith("hint: go vet reports code that go build and go test accept")
    assert "set run_vet to false" in hint

    before = len(dagger_engine.log.snapshot()["execs"])
    values = parse_args([str(src), "--no-vet", "--output", str(tmp_path / "v2.tar")])
    state = build(**values)
    assert state.is_completed(), state.message
    execs = dagger_engine.log.snapshot()["execs"][before:]
    assert ["go", "test", "./..."] in execs
    assert not any(e[:2] == ["go", "vet"] for e in execs)


def test_a_type_error_that_go_vet_meets_first_gets_no_vet_hint() -> None:
    stderr = "# example.com/app\n# [example.com/app]\nvet: ./main.go:3:15: undefined: thing\n"
    assert (
        go_hint(
            stderr,
            builder_image="golang:1.27.3",
            go_auth_secret_block="",
            command=["go", "vet", "./..."],
        )
        == ""
    )


def test_a_builder_without_git_is_named_when_go_needs_git(
    tmp_path: Path, dagger_engine: TestEngine
) -> None:
    """cmd/go's own words, from the real toolchain the test engine runs, when it
    must fetch a module from its repository (GOPROXY=direct) on a PATH without git,
    as in an -alpine golang image. For a github.com path Go knows the VCS, and
    looks for git before any network."""
    src = write_tree(
        tmp_path / "nogit",
        {
            "go.mod": (
                "module example.com/nogit\n\ngo 1.22\n\nrequire github.com/example/lib v1.0.0\n"
            )
        },
    )
    go = Path(dagger_engine.engine.executor.go_binary())
    env = {
        "HOME": str(tmp_path),
        "PATH": str(go.parent),
        "GOPROXY": "direct",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=mod",
        "GOMODCACHE": str(tmp_path / "mod"),
        "GOCACHE": str(tmp_path / "cache"),
    }
    assert not shutil.which("git", path=env["PATH"])
    proc = subprocess.run(
        [str(go), "mod", "download"], cwd=src, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    hint = go_hint(
        proc.stderr,
        builder_image="golang:1.27.3-alpine",
        go_auth_secret_block="",
        command=["go", "mod", "download"],
    )
    assert hint.startswith("builder_image 'golang:1.27.3-alpine' has no git, which Go needs"), (
        proc.stderr
    )


def test_a_git_source_whose_module_is_in_a_subdirectory_gets_the_module_dir_hint(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    """Only the engine sees a git URL's tree, so a module in ``server/`` built with
    the default module_dir fails in go; the hint names module_dir, and with it set
    the build completes."""
    repo = write_tree(
        tmp_path / "mono",
        {
            "README.md": "a service and its web app\n",
            "server/go.mod": "module example.com/server\n\ngo 1.22\n",
            "server/main.go": "package main\n\nfunc main() {}\n",
        },
    )
    commit_all(repo, "one")
    url = git_daemon.add_repo("mono", repo)
    state = build(source=url, run_checks=False, output=str(tmp_path / "m1.tar"))
    exc, hint = failed_command(state)
    assert exc.command == ["go", "mod", "download"]
    assert "go: no modules specified" in exc.stderr  # Go's own words
    assert hint == (
        "hint: the source has no go.mod in module_dir '.': set module_dir to the directory "
        "of the Go module (the one holding go.mod)"
    )
    state = build(
        source=url, module_dir="server", run_checks=False, output=str(tmp_path / "m2.tar")
    )
    assert state.is_completed(), state.message


def test_a_missing_package_that_go_vet_meets_first_gets_no_vet_hint() -> None:
    """go vet loads the packages before its analyzers run, and the loader's errors
    come in the analyzers' file:line:col form; go build would fail on them too."""
    stderr = (
        "main.go:6:2: cannot find module providing package example.com/svc/greet: "
        "import lookup disabled by -mod=readonly\n"
    )
    hint = go_hint(
        stderr, builder_image="golang:1.27.3", go_auth_secret_block="", command=["go", "vet"]
    )
    assert hint == ""
    finding = "# example.com/app\n./main.go:9:7: call of show copies lock value\n"
    assert go_hint(
        finding, builder_image="golang:1.27.3", go_auth_secret_block="", command=["go", "vet"]
    ).startswith("go vet reports code")


def test_a_symlink_out_of_the_source_that_go_misses_gets_the_fix_and_the_fix_builds(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    """A package shared by a symlink (svc/greet -> ../shared/greet) builds on this
    machine; the engine gets the link, not the package, and Go says only that the
    package is missing. The hint names the link and the source that holds both,
    and that source builds."""
    mono = tmp_path / "mono"
    write_tree(
        mono / "shared" / "greet",
        {"greet.go": 'package greet\n\nfunc Hello() string { return "hello via link" }\n'},
    )
    svc = write_tree(
        mono / "svc",
        {
            "go.mod": "module example.com/svc\n\ngo 1.22\n",
            "main.go": (
                'package main\n\nimport (\n\t"fmt"\n\n\t"example.com/svc/greet"\n)\n\n'
                "func main() { fmt.Println(greet.Hello()) }\n"
            ),
        },
    )
    (svc / "greet").symlink_to("../shared/greet")
    state = build(source=str(svc), output=str(tmp_path / "a.tar"))
    exc, hint = failed_command(state)
    assert "example.com/svc/greet" in exc.stderr  # go's words name the package only
    assert hint.startswith(f"hint: source {str(svc)!r} sends a symlink leading out of it")
    assert "(greet -> ../shared/greet)" in hint
    assert f"set source to {str(mono)!r} and module_dir to 'svc'" in hint
    assert "go vet reports" not in hint
    noted = [m for m in run_logs(state.state_details.flow_run_id) if "leading out" in m]
    assert noted == [
        f"load source: {hint.removeprefix('hint: ')} (a link the build never reads does no harm)"
    ]

    state = build(source=str(mono), module_dir="svc", output=str(tmp_path / "b.tar"))
    assert state.is_completed(), state.message
    assert not [m for m in run_logs(state.state_details.flow_run_id) if "leading out" in m]
    tarball = f"oci-archive:{tmp_path / 'b.tar'}"
    binary = extract_file(tarball, "/usr/local/bin/svc", tmp_path / "svc-bin")
    out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "hello via link"


def test_a_stale_vendor_directory_gets_the_hint_and_leaving_it_out_builds(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    """go.mod moved on (a requirement bumped) and vendor/ was not redone: with
    vendor/modules.txt sent the build uses vendor/, as go build does, and Go says
    ``inconsistent vendoring``. Its own advice, -mod=readonly, is no parameter
    here, so the hint names go mod vendor, or vendor/ left out; left out by
    .dockerignore, the module downloads what it needs and builds."""
    lib = 'package lib\n\nfunc G() string { return "from lib" }\n'
    repo = write_tree(
        tmp_path / "stale",
        {
            "go.mod": (
                "module example.com/app\n\ngo 1.22\n\nrequire example.com/lib v0.0.1\n\n"
                "replace example.com/lib => ./lib\n"
            ),
            "main.go": (
                'package main\n\nimport (\n\t"fmt"\n\n\t"example.com/lib"\n)\n\n'
                "func main() { fmt.Println(lib.G()) }\n"
            ),
            "lib/go.mod": "module example.com/lib\n\ngo 1.22\n",
            "lib/lib.go": lib,
            # As go mod vendor wrote it when go.mod still required v0.0.0.
            "vendor/modules.txt": (
                "# example.com/lib v0.0.0 => ./lib\n## explicit; go 1.22\nexample.com/lib\n"
                "# example.com/lib => ./lib\n"
            ),
            "vendor/example.com/lib/lib.go": lib,
        },
    )
    state = build(source=str(repo), run_checks=False, output=str(tmp_path / "s1.tar"))
    exc, hint = failed_command(state)
    assert "go: inconsistent vendoring in /src" in exc.stderr  # Go's own words
    assert hint == (
        "hint: vendor/ does not match go.mod, and the build uses vendor/ once its "
        "modules.txt is sent (-mod=vendor, as go build does): run 'go mod vendor' and "
        "commit vendor/, or leave vendor/ out of the source (a .dockerignore line vendor) "
        "to download the modules instead"
    )
    # In a workspace Go names go work vendor, and so does the hint.
    workspace = exc.stderr.replace("go mod vendor", "go work vendor")
    assert "run 'go work vendor'" in go_hint(
        workspace, builder_image="golang:1.27.3", go_auth_secret_block=""
    )

    (repo / ".dockerignore").write_text("vendor\n")
    out = tmp_path / "s2.tar"
    state = build(source=str(repo), run_checks=False, output=str(out))
    assert state.is_completed(), state.message
    binary = extract_file(f"oci-archive:{out}", "/usr/local/bin/stale", tmp_path / "bin")
    printed = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    assert printed == "from lib\n"


def test_a_git_source_naming_a_module_outside_it_gets_the_hint(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    """A committed go.work that uses a checkout beside the repository, or a go.mod
    replacement pointing there: a local source is refused before any engine work
    (tests/test_gomod.py); a git URL's tree is only known to the engine, where go
    fails, and the hint says why."""
    files = {
        "go.mod": "module example.com/app\n\ngo 1.22\n",
        "main.go": "package main\n\nfunc main() {}\n",
        "go.work": "go 1.22\n\nuse (\n\t.\n\t../other\n)\n",
    }
    repo = write_tree(tmp_path / "ws", files)
    commit_all(repo, "one")
    url = git_daemon.add_repo("ws-outside", repo)
    state = build(source=url, run_checks=False, output=str(tmp_path / "o1.tar"))
    exc, hint = failed_command(state)
    assert "cannot load module ../other listed in go.work file" in exc.stderr  # Go's words
    assert hint == (
        "hint: the source's go.work uses ../other, which is not in the source the engine "
        "received (it gets the source alone): a module named by a path must be inside it; "
        "for a git URL, committed at that ref, with module_dir pointing at the module"
    )

    (repo / "go.work").unlink()
    (repo / "go.mod").write_text(
        "module example.com/app\n\ngo 1.22\n\nrequire example.com/lib v0.0.0\n\n"
        "replace example.com/lib => ../lib\n"
    )
    (repo / "main.go").write_text('package main\n\nimport _ "example.com/lib"\n\nfunc main() {}\n')
    commit_all(repo, "two")
    url = git_daemon.add_repo("replace-outside", repo)
    state = build(source=url, run_checks=False, output=str(tmp_path / "o2.tar"))
    exc, hint = failed_command(state)
    assert exc.command == ["go", "mod", "download"]
    assert "(replaced by ../lib)" in exc.stderr
    assert hint.startswith("hint: the source's go.mod replaces a module with ../lib, which is")
