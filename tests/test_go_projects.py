"""A corpus of synthetic Go projects, in the shapes real services come in.

Each project is generated here (no third-party code), built through the flow for
linux/amd64 and linux/arm64, and its amd64 binary is run. The test engine runs
go with ``GOPROXY=off`` (no network here), so a project must build from what the
source holds, as plain ``go build`` does in the same checkout.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from tasks.params import ParamsError, parse_params
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import build
from tests.gitrepo import commit_all
from tests.oci_check import ELF_AARCH64, elf_machine, extract_file
from tests.prefect_fixtures import PrefectAPI
from tests.trees import write_tree

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"), reason="binaries are run on an x86_64 host"
)

MAIN = """package main

import (
\t"fmt"

\t"example.com/lib"
)

var version = "dev"

func main() { fmt.Println(lib.Greeting(), version) }
"""
LIB = 'package lib\n\nfunc Greeting() string { return "hello from lib" }\n'
LIB_TEST = """package lib

import "testing"

func TestGreeting(t *testing.T) {
\tif Greeting() == "" {
\t\tt.Fatal("empty")
\t}
}
"""
GOMOD = "module {name}\n\ngo 1.22\n"
PROG = "package main\n\nfunc main() {}\n"


@dataclass
class Project:
    """A generated project: its files, the build parameters it needs, the app's
    name, what its binary prints, and an optional step after writing (git)."""

    files: dict[str, str]
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    app: str = ""
    after: Callable[[Path], None] | None = None


def main_printing(text: str, imports: str = "", body: str = "") -> str:
    imports = "\n".join(f'\t"{i}"' for i in ["fmt", *imports.split()] if i)
    return (
        f'package main\n\nimport (\n{imports}\n)\n\nvar version = "dev"\n\n'
        f"func main() {{\n{body}\tfmt.Println({text}, version)\n}}\n"
    )


def tagged(constraint: str, flavour: str) -> str:
    return f'//go:build {constraint}\n\npackage main\n\nconst flavour = "{flavour}"\n'


CORPUS: dict[str, Project] = {
    "vendored": Project(
        files={
            "go.mod": GOMOD.format(name="example.com/app") + "\nrequire example.com/lib v1.0.0\n",
            "main.go": MAIN,
            "vendor/modules.txt": "# example.com/lib v1.0.0\n## explicit\nexample.com/lib\n",
            "vendor/example.com/lib/lib.go": LIB,
        },
        output="hello from lib",
    ),
    "embed": Project(
        files={
            "go.mod": GOMOD.format(name="example.com/embedder"),
            "main.go": (
                'package main\n\nimport (\n\t_ "embed"\n\t"fmt"\n\t"strings"\n)\n\n'
                "//go:embed assets/greeting.txt\nvar greeting string\n\n"
                'var version = "dev"\n\n'
                "func main() { fmt.Println(strings.TrimSpace(greeting), version) }\n"
            ),
            "assets/greeting.txt": "embedded hello\n",
        },
        output="embedded hello",
    ),
    "cmd-layout-internal": Project(
        files={
            "go.mod": GOMOD.format(name="example.com/svc"),
            "cmd/svc/main.go": main_printing(
                "config.Name()", imports="example.com/svc/internal/config"
            ),
            "internal/config/config.go": 'package config\n\nfunc Name() string { return "svc" }\n',
            "internal/config/config_test.go": (
                'package config\n\nimport "testing"\n\n'
                'func TestName(t *testing.T) { if Name() != "svc" { t.Fatal(Name()) } }\n'
            ),
        },
        params={"main_package": "./cmd/svc", "app_name": "svc"},
        output="svc",
        app="svc",
        after=lambda root: commit_and_add_untracked_binary(root),
    ),
    "build-tags": Project(
        files={
            "go.mod": GOMOD.format(name="example.com/tagged"),
            "main.go": main_printing("flavour"),
            "flavour_default.go": tagged("!premium", "basic"),
            "flavour_premium.go": tagged("premium", "premium"),
        },
        params={"build_tags": ["premium"]},
        output="premium",
    ),
    "sibling-replace": Project(
        files={
            "lib/go.mod": GOMOD.format(name="example.com/lib"),
            "lib/lib.go": LIB,
            "lib/lib_test.go": LIB_TEST,
            "services/api/go.mod": (
                GOMOD.format(name="example.com/api")
                + "\nrequire example.com/lib v0.0.0\n\nreplace example.com/lib => ../../lib\n"
            ),
            "services/api/main.go": MAIN,
            "README.md": "monorepo root, no go.mod here\n",
        },
        params={"module_dir": "services/api"},
        output="hello from lib",
        app="api",  # named after the module directory
    ),
    "go-work": Project(
        files={
            "go.work": "go 1.22\n\nuse (\n\t./app\n\t./lib\n)\n",
            "lib/go.mod": GOMOD.format(name="example.com/lib"),
            "lib/lib.go": LIB,
            "app/go.mod": GOMOD.format(name="example.com/app"),
            "app/main.go": MAIN,
        },
        params={"module_dir": "app"},
        output="hello from lib",
        app="app",
    ),
    # Go's workspace tutorial: the service requires a published version of the
    # library, and the go.work (here one level down, in services/) swaps in the
    # local copy. go build uses that copy; go mod download in workspace mode
    # resolves the required version too, and offline, or for a version never
    # published, fails.
    "go-work-over-a-required-version": Project(
        files={
            "services/go.work": "go 1.22\n\nuse (\n\t./api\n\t./lib\n)\n",
            "services/lib/go.mod": GOMOD.format(name="example.com/lib"),
            "services/lib/lib.go": LIB,
            "services/api/go.mod": (
                GOMOD.format(name="example.com/api") + "\nrequire example.com/lib v1.2.0\n"
            ),
            "services/api/main.go": MAIN,
        },
        params={"module_dir": "services/api"},
        output="hello from lib",
        app="api",
    ),
    "dockerignore-nested-negated": Project(
        files={
            "go.mod": GOMOD.format(name="example.com/ctx"),
            "main.go": main_printing("msg"),
            "msg.go": 'package main\n\nconst msg = "context ok"\n',
            # docs/ at the root is excluded, internal/docs is not (anchored);
            # everything under testdata/ but the one re-included file.
            ".dockerignore": "# build context\ndocs\ntestdata/**\n!testdata/keep.txt\n**/*.tmp\n",
            "docs/broken.go": "package main\n\nthis does not compile\n",
            "internal/docs/doc.go": "package docs\n\nconst Doc = 1\n",
            "scratch/notes.tmp": "x\n",
            "testdata/big.bin": "x" * 1000,
            "testdata/keep.txt": "kept\n",
        },
        output="context ok",
    ),
}


def commit_and_add_untracked_binary(root: Path) -> None:
    """The tracked package cmd/svc, then the usual .gitignore line naming the binary
    (``svc``, which also names the tracked directory), then a local build."""
    commit_all(root, "init")
    (root / ".gitignore").write_text("svc\n/bin/\n")
    commit_all(root, "ignore the binary")
    (root / "svc").write_bytes(b"\x7fELF a stale local build\n")  # untracked, ignored


def extract(tarball: Path, app: str, arch: str, dest: Path) -> Path:
    return extract_file(f"oci-archive:{tarball}", f"/usr/local/bin/{app}", dest, arch)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_project_builds_for_amd64_and_arm64_and_runs(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path, name: str
) -> None:
    project = CORPUS[name]
    root = write_tree(tmp_path / name, project.files)
    if project.after:
        project.after(root)
    out = tmp_path / f"{name}.tar"
    state = build(
        source=str(root),
        version="1.0.0",
        output=str(out),
        platforms=["linux/amd64", "linux/arm64"],
        **project.params,
    )
    assert state.is_completed(), state.message
    app = project.app or name
    assert state.result().app == app
    amd64 = extract(out, app, "amd64", tmp_path / "amd64.bin")
    printed = subprocess.run([str(amd64)], capture_output=True, text=True, check=True).stdout
    assert printed == f"{project.output} 1.0.0\n"
    assert elf_machine(extract(out, app, "arm64", tmp_path / "arm64.bin")) == ELF_AARCH64


def test_vendored_build_downloads_nothing_and_still_vets_and_tests(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    # A source of its own, so the engine's exec cache cannot answer for go vet/test.
    files = {**CORPUS["vendored"].files, "extra.go": "package main\n\nconst extra = 1\n"}
    root = write_tree(tmp_path / "vendored", files)
    state = build(source=str(root), version="1.0.1", output=str(tmp_path / "v.tar"))
    assert state.is_completed(), state.message
    execs = dagger_engine.log.snapshot()["execs"]
    assert ["go", "mod", "download"] not in execs  # nothing to download
    assert {tuple(e[:2]) for e in execs} >= {("go", "vet"), ("go", "test"), ("go", "build")}
    # A local source's file list answered "vendored?": no round trip to the engine.
    assert "Directory.exists" not in dagger_engine.log.snapshot()["calls"]


class _Untouchable:
    """A Dagger directory that fails the test if the engine is asked anything."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine was asked: {name}")


@pytest.mark.parametrize(
    ("files", "module_dir", "vendored"),
    [
        ({"vendor/modules.txt": "", "go.mod": "module a\n", "main.go": PROG}, ".", True),
        (
            {"svc/vendor/modules.txt": "", "svc/go.mod": "module a\n", "svc/main.go": PROG},
            "svc",
            True,
        ),
        (
            {
                "svc/vendor/modules.txt": "",
                "svc/go.mod": "module a\n",
                "go.mod": "module r\n",
                "main.go": PROG,
            },
            ".",
            False,
        ),
        # Excluded from the context: the engine never sees it, so not vendored.
        (
            {
                "vendor/modules.txt": "",
                "go.mod": "module a\n",
                "main.go": PROG,
                ".dockerignore": "vendor\n",
            },
            ".",
            False,
        ),
    ],
)
def test_vendored_is_decided_from_the_files_sent(
    tmp_path: Path, files: dict[str, str], module_dir: str, vendored: bool
) -> None:
    from tasks.compile import is_vendored
    from tasks.source import describe_local

    root = write_tree(tmp_path / "src", files)
    params = parse_params({"source": str(root), "module_dir": module_dir})
    source = describe_local(params)
    answer = anyio.run(is_vendored, _Untouchable(), params, source)  # type: ignore[arg-type]
    assert answer is vendored


WS = {"svc/go.mod": "module a\n", "svc/main.go": PROG}


@pytest.mark.parametrize(
    ("files", "module_dir", "workspace", "vendored"),
    [
        ({"go.work": "go 1.22\n", **WS}, "svc", "go.work", False),
        (
            {"a/go.work": "go 1.22\n", "a/b/svc/go.mod": "module a\n", "a/b/svc/main.go": PROG},
            "a/b/svc",
            "a/go.work",
            False,
        ),
        ({"go.work": "go 1.22\n", "go.mod": "module a\n", "main.go": PROG}, ".", "go.work", False),
        # Beside the module, not above it: Go never reads it.
        ({"lib/go.work": "go 1.22\n", **WS}, "svc", None, False),
        # Left out of the context (often on purpose): the engine never sees it.
        ({"go.work": "go 1.22\n", **WS, ".dockerignore": "go.work\n"}, "svc", None, False),
        # go work vendor's vendor/ beside the go.work; a module's own one does not
        # count in a workspace, and does alone.
        ({"go.work": "go 1.22\n", **WS, "vendor/modules.txt": ""}, "svc", "go.work", True),
        ({"go.work": "go 1.22\n", **WS, "svc/vendor/modules.txt": ""}, "svc", "go.work", False),
        ({**WS, "svc/vendor/modules.txt": ""}, "svc", None, True),
    ],
)
def test_workspace_mode_and_vendoring_are_decided_from_the_files_sent(
    tmp_path: Path,
    files: dict[str, str],
    module_dir: str,
    workspace: str | None,
    vendored: bool,
) -> None:
    from tasks.compile import is_vendored, workspace_file
    from tasks.source import describe_local

    root = write_tree(tmp_path / "src", files)
    params = parse_params({"source": str(root), "module_dir": module_dir})
    source = describe_local(params)
    found = anyio.run(workspace_file, _Untouchable(), params, source)  # type: ignore[arg-type]
    assert found == workspace
    answer = anyio.run(is_vendored, _Untouchable(), params, source, found)  # type: ignore[arg-type]
    assert answer is vendored


def test_a_module_vendor_directory_inside_a_workspace_builds_from_the_workspace(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    """A module vendored on its own (GOWORK=off go mod vendor) inside a workspace:
    go build there uses the workspace, not that vendor/, and would refuse it as
    inconsistent under -mod=vendor; so the build does as go build does."""
    files = {
        "go.work": "go 1.22\n\nuse (\n\t./svc\n\t./lib\n)\n",
        "lib/go.mod": GOMOD.format(name="example.com/lib"),
        "lib/lib.go": LIB,
        "svc/go.mod": (
            GOMOD.format(name="example.com/svc")
            + "\nrequire example.com/lib v0.0.0\n\nreplace example.com/lib => ../lib\n"
        ),
        "svc/main.go": MAIN,
        "svc/vendor/modules.txt": (
            "# example.com/lib v0.0.0 => ../lib\n## explicit; go 1.22\nexample.com/lib\n"
            "# example.com/lib => ../lib\n"
        ),
        "svc/vendor/example.com/lib/lib.go": LIB,
    }
    root = write_tree(tmp_path / "wsv", files)
    out = tmp_path / "wsv.tar"
    state = build(
        source=str(root), module_dir="svc", version="1.0.0", output=str(out), run_checks=False
    )
    assert state.is_completed(), state.message
    binary = extract(out, "svc", "amd64", tmp_path / "svc.bin")
    printed = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    assert printed == "hello from lib 1.0.0\n"


def test_a_workspace_build_has_no_download_step(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    """go mod download in workspace mode resolves the workspace's own modules at
    their required versions; the build fetches what it needs instead."""
    # A source of its own, so the engine's exec cache cannot answer for go vet/test.
    files = {
        **CORPUS["go-work-over-a-required-version"].files,
        "services/api/extra.go": "package main\n\nconst extra = 1\n",
    }
    root = write_tree(tmp_path / "ws", files)
    state = build(source=str(root), module_dir="services/api", output=str(tmp_path / "w.tar"))
    assert state.is_completed(), state.message
    execs = dagger_engine.log.snapshot()["execs"]
    assert ["go", "mod", "download"] not in execs
    assert {tuple(e[:2]) for e in execs} >= {("go", "vet"), ("go", "test"), ("go", "build")}


def test_module_dir_is_checked_before_any_engine_work(tmp_path: Path) -> None:
    repo = write_tree(
        tmp_path / "mono",
        {"services/api/go.mod": "module example.com/api\n", "services/api/main.go": PROG},
    )
    with pytest.raises(ParamsError, match=r"^module_dir: .*has no go\.mod.*set module_dir"):
        parse_params({"source": str(repo)})
    with pytest.raises(ParamsError, match=r"^module_dir: '\.\./x' must not contain '\.\.'"):
        parse_params({"source": str(repo), "module_dir": "../x"})
    assert parse_params({"source": str(repo), "module_dir": "services/api/"}).module_dir == (
        "services/api"
    )
