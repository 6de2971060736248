"""Real Go project shapes: vendored modules, monorepos with replace directives,
go.work workspaces.

The test engine runs go with ``GOPROXY=off`` (no network here), so a build that
tries to download a module fails; these projects must build from what the
source holds, as plain ``go build`` does in the same checkout.
"""

from __future__ import annotations

import asyncio
import platform
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flows.build import multistage_build
from tasks.params import ParamsError, parse_params
from tests.dagger_test_engine.server import TestEngine
from tests.oci_check import extract_file
from tests.prefect_fixtures import PrefectAPI

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


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def build(**params: Any):
    return asyncio.run(multistage_build(**params, return_state=True))


def run_image(tarball: Path, app: str, tmp: Path) -> str:
    binary = extract_file(f"oci-archive:{tarball}", f"/usr/local/bin/{app}", tmp / f"{app}.bin")
    return subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout


def test_vendored_module_builds_offline_from_vendor(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    src = write(
        tmp_path / "vendored",
        {
            "go.mod": "module example.com/app\n\ngo 1.22\n\nrequire example.com/lib v1.0.0\n",
            "go.sum": "",
            "main.go": MAIN,
            "vendor/modules.txt": "# example.com/lib v1.0.0\n## explicit\nexample.com/lib\n",
            "vendor/example.com/lib/lib.go": LIB,
        },
    )
    out = tmp_path / "v.tar"
    state = build(source=str(src), version="1.0.0", output=str(out))
    assert state.is_completed(), state.message
    assert run_image(out, "vendored", tmp_path) == "hello from lib 1.0.0\n"
    execs = dagger_engine.log.snapshot()["execs"]
    assert ["go", "mod", "download"] not in execs  # nothing to download
    assert {tuple(e[:2]) for e in execs} >= {("go", "vet"), ("go", "test"), ("go", "build")}


def test_monorepo_module_with_replace_to_a_sibling(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    repo = write(
        tmp_path / "mono",
        {
            "lib/go.mod": "module example.com/lib\n\ngo 1.22\n",
            "lib/lib.go": LIB,
            "lib/lib_test.go": LIB_TEST,
            "services/api/go.mod": (
                "module example.com/api\n\ngo 1.22\n\nrequire example.com/lib v0.0.0\n\n"
                "replace example.com/lib => ../../lib\n"
            ),
            "services/api/main.go": MAIN,
            "README.md": "monorepo root, no go.mod here\n",
        },
    )
    out = tmp_path / "m.tar"
    state = build(source=str(repo), module_dir="services/api", version="2.0.0", output=str(out))
    assert state.is_completed(), state.message
    assert state.result().app == "api"  # named after the module directory
    assert run_image(out, "api", tmp_path) == "hello from lib 2.0.0\n"


def test_go_work_workspace(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    repo = write(
        tmp_path / "ws",
        {
            "go.work": "go 1.22\n\nuse (\n\t./app\n\t./lib\n)\n",
            "lib/go.mod": "module example.com/lib\n\ngo 1.22\n",
            "lib/lib.go": LIB,
            "app/go.mod": "module example.com/app\n\ngo 1.22\n",
            "app/main.go": MAIN,
        },
    )
    out = tmp_path / "w.tar"
    state = build(source=str(repo), module_dir="app", version="3.0.0", output=str(out))
    assert state.is_completed(), state.message
    assert run_image(out, "app", tmp_path) == "hello from lib 3.0.0\n"


def test_module_dir_is_checked_before_any_engine_work(tmp_path: Path) -> None:
    repo = write(tmp_path / "mono", {"services/api/go.mod": "module example.com/api\n"})
    with pytest.raises(ParamsError, match=r"^module_dir: .*has no go\.mod.*set module_dir"):
        parse_params({"source": str(repo)})
    with pytest.raises(ParamsError, match=r"^module_dir: '\.\./x' must not contain '\.\.'"):
        parse_params({"source": str(repo), "module_dir": "../x"})
    assert parse_params({"source": str(repo), "module_dir": "services/api/"}).module_dir == (
        "services/api"
    )
