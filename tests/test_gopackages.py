"""A library package is refused as ``main_package`` (``go build -o`` would write a
package archive without a word): before any engine work for a local module, and
after ``go build`` for a git source, whose tree only the engine sees."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import go as go_module
import pytest

from tasks.gopackages import check_main_package, is_program, main_packages, package_name
from tasks.params import ParamsError, parse_params
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import build, task_runs
from tests.git_servers import GitDaemon
from tests.gitrepo import commit_all
from tests.oci_check import extract_file
from tests.prefect_fixtures import PrefectAPI
from tests.trees import write_tree

GOMOD = "module example.com/lib\n\ngo 1.22\n"
MAIN = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("tool") }\n'
LIB = "package lib\n\nfunc F() int { return 1 }\n"


def library_with_commands(root: Path) -> Path:
    """The common shape: a library at the root, its programs under cmd/."""
    return write_tree(
        root,
        {
            "go.mod": GOMOD,
            "lib.go": LIB,
            "lib_test.go": "package lib_test\n",
            # A generator beside the library: Go leaves it out of the package.
            "gen.go": "//go:build ignore\n\npackage main\n\nfunc main() {}\n",
            "cmd/tool/main.go": MAIN,
            "cmd/admin/main.go": MAIN,
            "internal/x/x.go": "package x\n",
            "testdata/fixture/main.go": MAIN,  # never a candidate
        },
    )


def served_library(git_daemon: GitDaemon, tmp_path: Path, name: str) -> str:
    """:func:`library_with_commands` committed and served as git repository ``name``."""
    repo = library_with_commands(tmp_path / name)
    commit_all(repo, "init")
    git_daemon.add_repo(name, repo)
    return git_daemon.url(name)


def test_a_library_root_is_refused_naming_the_main_packages(tmp_path: Path) -> None:
    root = library_with_commands(tmp_path / "lib")
    with pytest.raises(ParamsError) as caught:
        parse_params({"source": str(root)})
    assert str(caught.value) == (
        "main_package: '.' is package lib, not a main package; "
        "main packages in this module: ./cmd/admin, ./cmd/tool"
    )
    assert parse_params({"source": str(root), "main_package": "cmd/tool"}).main_package == (
        "./cmd/tool"
    )


def test_missing_or_empty_package_directories_are_refused_naming_the_main_packages(
    tmp_path: Path,
) -> None:
    """go build would fail on those too, but only once the engine runs it."""
    root = library_with_commands(tmp_path / "lib")
    write_tree(root, {"docs/README.md": "x\n", "tests/only_test.go": "package tests\n"})
    hint = "; main packages in this module: ./cmd/admin, ./cmd/tool"
    for package, problem in [
        ("./nope", "is not a directory of the module"),
        ("./docs", "holds no Go files"),
        ("./tests", "holds only Go test files"),
        ("./lib.go", "is not a directory of the module"),
    ]:
        with pytest.raises(ValueError) as caught:
            check_main_package(root, package)
        assert str(caught.value) == f"{package!r} {problem}{hint}"
    with pytest.raises(ValueError, match=r"^'\./internal/x' is package x, not a main package; "):
        check_main_package(root, "./internal/x")


def test_a_module_with_only_cmd_at_its_root_is_refused_before_any_engine_work(
    tmp_path: Path,
) -> None:
    """The common shape the default '.' misses: nothing at the root but go.mod."""
    root = write_tree(tmp_path / "svc", {"go.mod": GOMOD, "cmd/svc/main.go": MAIN})
    with pytest.raises(ParamsError) as caught:
        parse_params({"source": str(root)})
    assert str(caught.value) == (
        "main_package: '.' holds no Go files; main packages in this module: ./cmd/svc"
    )
    empty = write_tree(tmp_path / "empty", {"go.mod": GOMOD, "README.md": "x\n"})
    with pytest.raises(ParamsError, match=r"'\.' holds no Go files \(the module has no main "):
        parse_params({"source": str(empty)})


def test_files_only_a_constraint_keeps_out_are_refused_unless_the_tags_let_them_in(
    tmp_path: Path,
) -> None:
    """The build's tags are known before the engine runs, so ``//go:build ignore``
    is a sure answer: Go leaves the file out unless ``build_tags`` names the tag."""
    root = write_tree(
        tmp_path / "m",
        {"go.mod": GOMOD, "gen/gen.go": "//go:build ignore\n\npackage main\n", **{"main.go": MAIN}},
    )
    with pytest.raises(ParamsError) as caught:
        parse_params({"source": str(root), "main_package": "./gen"})
    assert str(caught.value) == (
        "main_package: build constraints exclude all Go files in './gen' for linux/amd64 "
        "(gen.go: //go:build ignore); main packages in this module: ."
    )
    given = {"source": str(root), "main_package": "./gen", "build_tags": ["ignore"]}
    assert parse_params(given).main_package == "./gen"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("\ufeff// Copyright\n/* a\n block */\n\npackage main // the program\n", "main"),
        ("//go:build linux && amd64\n\npackage main\n", "main"),
        ("// +build ignore\n\npackage main\n", "main"),
        ("//go:build ignore\n\npackage main\n", "main"),
        ("package /* c */ main\n", "main"),
        ("package café\n", "café"),
        ("/* never closed\npackage main\n", None),
        ("not go at all\n", None),
    ],
)
def test_package_clause_is_read_past_comments_and_constraints(
    tmp_path: Path, text: str, name: str | None
) -> None:
    path = tmp_path / "f.go"
    path.write_text(text)
    assert package_name(path) == name


def test_an_unreadable_clause_lets_the_build_go_on(tmp_path: Path) -> None:
    """Only a sure answer refuses: one file the reader cannot place is enough to
    leave the decision to go build (and the check after it)."""
    root = write_tree(tmp_path / "m", {"go.mod": GOMOD, "a.go": LIB, "b.go": "/* open\n"})
    check_main_package(root, ".")


def test_main_packages_are_listed_nearest_first(tmp_path: Path) -> None:
    root = library_with_commands(tmp_path / "lib")
    (root / "main.go").write_text(MAIN.replace("package main", "package lib"))
    write_tree(root, {"tools/deep/er/est/main.go": MAIN})  # below three levels
    assert main_packages(root) == ["./cmd/admin", "./cmd/tool"]


def test_is_program_tells_an_executable_from_a_package_archive(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    go = dagger_engine.engine.executor.go_binary()  # the engine's real toolchain
    root = library_with_commands(tmp_path / "lib")
    env = {"GOFLAGS": "-mod=mod", "GOPROXY": "off", "CGO_ENABLED": "0", "HOME": str(tmp_path)}
    env["GOCACHE"] = str(tmp_path / "cache")
    env["PATH"] = str(Path(go).parent)
    subprocess.run([go, "build", "-o", "archive", "."], cwd=root, env=env, check=True)
    subprocess.run([go, "build", "-o", "program", "./cmd/tool"], cwd=root, env=env, check=True)
    assert not is_program(root / "archive")
    assert is_program(root / "program")


def test_a_git_library_package_fails_once_after_go_build(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    git_daemon: GitDaemon,
    tmp_path: Path,
) -> None:
    state = build(
        source=served_library(git_daemon, tmp_path, "golib"),
        version="1.0.0",
        output=str(tmp_path / "lib.tar"),
        run_checks=False,
    )
    assert state.is_failed()
    assert (
        "main_package: '.' is not a main package: go build wrote a package archive, not a "
        "program; main packages in this module: ./cmd/admin, ./cmd/tool"
    ) in (state.message or "")
    assert not (tmp_path / "lib.tar").exists()
    compiles = [r for r in task_runs(state.state_details.flow_run_id) if "compile" in r.name]
    assert compiles and all(r.run_count == 1 for r in compiles)  # not retried


def test_an_import_path_in_the_module_is_its_directory(tmp_path: Path) -> None:
    """ko and ``go install`` take import paths; inside a local module one names a
    directory, and is checked as that directory."""
    root = library_with_commands(tmp_path / "lib")
    write_tree(root, {"cmd.d/x/main.go": MAIN})
    for given, normalised in [
        ("example.com/lib/cmd/tool", "./cmd/tool"),
        ("example.com/lib/cmd/admin/", "./cmd/admin"),
        ("cmd.d/x", "./cmd.d/x"),  # a directory with a dot is still a directory
    ]:
        assert parse_params({"source": str(root), "main_package": given}).main_package == (
            normalised
        )
    with pytest.raises(ParamsError, match=r"^main_package: '\.' is package lib, not a main"):
        parse_params({"source": str(root), "main_package": "example.com/lib"})
    with pytest.raises(ParamsError, match=r"^main_package: '\./cmd/nope' is not a directory"):
        parse_params({"source": str(root), "main_package": "example.com/lib/cmd/nope"})
    # Another module's program (a tool among the requirements) is go build's to find.
    other = parse_params({"source": str(root), "main_package": "golang.org/x/tools/cmd/stringer"})
    assert other.main_package == "golang.org/x/tools/cmd/stringer"


def test_a_wildcard_is_refused_naming_the_programs_it_matches_as_go_list_does(
    tmp_path: Path,
) -> None:
    """A module of several programs given as ``./cmd/...``: each program gets a
    file of its own in the image, so each is named; the refusal lists what the
    pattern matches, held against ``go list`` of the same pattern."""
    root = library_with_commands(tmp_path / "lib")
    write_tree(root, {"cmd/tool/sub/main.go": MAIN, "tools/gen/main.go": MAIN})
    go = str(Path(go_module.__file__).parent / "bin" / "go")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "", "GOWORK": "off"}
    for pattern in [
        "./...",
        "./cmd/...",
        "./cmd/t...",
        "example.com/lib/cmd/tool/...",
        "./tools/...",
    ]:
        listed = subprocess.run(
            [go, "list", "-f", '{{if eq .Name "main"}}{{.ImportPath}}{{end}}', pattern],
            cwd=root,
            env={**env, "GOCACHE": str(tmp_path / "gocache")},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        expected = {"./" + p.removeprefix("example.com/lib/") for p in listed}
        with pytest.raises(ParamsError) as refused:
            parse_params({"source": str(root), "main_package": pattern})
        said = str(refused.value)
        head = f"main_package: {pattern!r} is a wildcard matching "
        tail = "; name the one main package to build, and list the others in extra_packages"
        assert said.startswith(head) and said.endswith(tail), said
        assert set(said[len(head) : -len(tail)].split(", ")) == expected, pattern
    # In extra_packages the main package is not listed again.
    with pytest.raises(ParamsError) as refused:
        parse_params(
            {"source": str(root), "main_package": "cmd/tool", "extra_packages": ["./cmd/..."]}
        )
    assert str(refused.value) == (
        "extra_packages: './cmd/...' is a wildcard matching ./cmd/admin, ./cmd/tool/sub; "
        "list each program here"
    )
    with pytest.raises(ParamsError) as refused:
        parse_params({"source": str(root), "main_package": "./internal/..."})
    assert str(refused.value) == (
        "main_package: './internal/...' is a wildcard, and matches no main package in the "
        "module (within 3 levels); name the one main package to build"
    )
    # A git source's tree is the engine's: the refusal names no package.
    with pytest.raises(ParamsError) as refused:
        parse_params({"source": "https://example.com/lib.git", "main_package": "./cmd/..."})
    assert str(refused.value) == (
        "main_package: './cmd/...' is a wildcard; name the one main package to build"
    )


def test_a_git_source_builds_a_program_by_its_import_path(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    git_daemon: GitDaemon,
    tmp_path: Path,
) -> None:
    out = tmp_path / "tool.tar"
    state = build(
        source=served_library(git_daemon, tmp_path, "golib-ip"),
        main_package="example.com/lib/cmd/tool",
        version="1.0.0",
        output=str(out),
        run_checks=False,
    )
    assert state.is_completed(), state.message
    assert state.result().app == "tool"  # go build's name for the package, not the repository's
    builds = [e for e in dagger_engine.log.snapshot()["execs"] if e[:2] == ["go", "build"]]
    assert builds[-1][-1] == "example.com/lib/cmd/tool"  # go build resolved it in the module
    binary = extract_file(f"oci-archive:{out}", "/usr/local/bin/tool", tmp_path / "bin", "amd64")
    assert subprocess.run([str(binary)], capture_output=True, text=True).stdout == "tool\n"


def test_a_package_of_a_nested_module_is_refused_unless_a_workspace_joins_them(
    tmp_path: Path,
) -> None:
    """golang/tools' shape: gopls/ has a go.mod of its own, so ``go build
    ./gopls`` from the root module fails in the engine; the message says which
    module_dir builds it, and the hint lists this module's own programs only."""
    root = write_tree(
        tmp_path / "tools",
        {
            "go.mod": "module golang.org/x/tools\n\ngo 1.22\n",
            "tools.go": "package tools\n",
            "cmd/bench/main.go": MAIN,
            "gopls/go.mod": "module golang.org/x/tools/gopls\n\ngo 1.22\n",
            "gopls/main.go": MAIN,
            "gopls/internal/cmd/x/main.go": MAIN,
        },
    )
    with pytest.raises(ParamsError) as caught:
        parse_params({"source": str(root), "main_package": "./gopls"})
    assert str(caught.value) == (
        "main_package: './gopls' is in another module (gopls/go.mod), which go build does not "
        "build from this one; set module_dir to 'gopls' and main_package to '.'; "
        "main packages in this module: ./cmd/bench"
    )
    fixed = parse_params({"source": str(root), "module_dir": "gopls"})
    assert (fixed.module_dir, fixed.main_package) == ("gopls", ".")
    (root / "go.work").write_text("go 1.22\n\nuse (\n\t.\n\t./gopls\n)\n")
    assert parse_params({"source": str(root), "main_package": "./gopls"}).main_package == "./gopls"


# Directory names go build refuses in an import path, and near misses it takes.
IMPORT_PATH_NAMES = {
    "aux": False,
    "Con.d": False,  # the name before the first dot, any case
    "lpt9": False,
    "tool.": False,
    "prog~1": False,
    "com10": True,
    "auxiliary": True,
    "v1.2": True,
    "a~b": True,
    "x~1y": True,
    "c++": True,
}


def test_directory_names_go_refuses_in_import_paths_are_refused_as_go_build_refuses_them(
    tmp_path: Path,
) -> None:
    """``go build ./cmd/aux`` fails with ``malformed import path`` even on Linux
    (golang.org/x/mod/module ``checkElem``): each name is held against the real
    go command, and the refused ones never show up among the hints."""
    root = write_tree(
        tmp_path / "m",
        {"go.mod": GOMOD, **{f"cmd/{name}/main.go": MAIN for name in IMPORT_PATH_NAMES}},
    )
    go = str(Path(go_module.__file__).parent / "bin" / "go")
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOWORK": "off",
        "GOCACHE": str(tmp_path / "gocache"),
    }
    hints = main_packages(root, limit=100)
    for name, valid in IMPORT_PATH_NAMES.items():
        built = subprocess.run(
            [go, "build", "-o", str(tmp_path / "out"), f"./cmd/{name}"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert (built.returncode == 0) is valid, (name, built.stderr)
        if not valid:
            assert "malformed import path" in built.stderr
        assert (f"./cmd/{name}" in hints) is valid, name
        params = {"source": str(root), "main_package": f"cmd/{name}"}
        if valid:
            assert parse_params(params).main_package == f"./cmd/{name}"
            continue
        with pytest.raises(ParamsError) as refused:
            parse_params(params)
        assert str(refused.value).startswith(
            f"main_package: 'cmd/{name}' is not a valid Go import path ("
        ), name
        assert "\n" not in str(refused.value)
        # The same name under extra_packages, and in an import path.
        with pytest.raises(ParamsError, match=r"^extra_packages: .*not a valid Go import path"):
            parse_params(
                {"source": str(root), "main_package": "cmd/c++", "extra_packages": [f"cmd/{name}"]}
            )
        with pytest.raises(ParamsError, match=r"^main_package: .*not a valid Go import path"):
            parse_params({"source": str(root), "main_package": f"example.com/lib/cmd/{name}"})
