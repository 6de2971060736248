"""Several programs in one image (``extra_packages``): a service and the tools it
ships with (a migrate command, an admin CLI) built by one ``go build -o DIR/``
per platform beside the main binary, each at /usr/local/bin/<go build's name>,
the entrypoint still the main package's program; and the default app name,
go build's name for a main package below the module's root.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from flows.build import failure_summary, parse_args
from tasks.gopackages import exec_name
from tasks.image_store import file_sha256
from tasks.params import parse_params
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import artifacts, build, task_runs
from tests.git_servers import GitDaemon
from tests.gitrepo import commit_all
from tests.oci_check import elf_machine, extract_file, inspect_config
from tests.paramcheck import problems
from tests.prefect_fixtures import PrefectAPI
from tests.trees import write_tree


def program(name: str) -> str:
    return f"""package main

import "fmt"

var version = "unset"

func main() {{ fmt.Println("{name}", version) }}
"""


SERVICE = {
    "go.mod": "module example.com/shop\n\ngo 1.22\n",
    "main.go": program("server"),
    "cmd/migrate/main.go": program("migrate"),
    "cmd/shopctl/v2/main.go": program("shopctl"),  # go install's name: shopctl, not v2
    "internal/db/db.go": "package db\n\nfunc Open() {}\n",
}


def test_exec_name_follows_go_install() -> None:
    assert exec_name("./cmd/server") == "server"
    assert exec_name("example.com/tool/v2") == "tool"
    assert exec_name("example.com/tool/v10") == "tool"
    assert exec_name("example.com/tool/v1") == "v1"  # v0 and v1 are no major versions
    assert exec_name("example.com/tool/v02") == "v02"
    assert exec_name("v2") == "v2"  # a path of one element is its own name


def test_a_top_level_major_version_directory_is_named_after_the_module(tmp_path: Path) -> None:
    """go applies DefaultExecName to the import path: ./v2 of example.com/shop is
    example.com/shop/v2, whose program go build names shop (run here)."""
    import os
    import subprocess

    import go as go_module

    src = write_tree(tmp_path / "repo", {**SERVICE, "v2/main.go": program("v2")})
    out = tmp_path / "out"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "CGO_ENABLED": "0"}
    env["GOCACHE"] = str(tmp_path / "gocache")
    go = str(Path(go_module.__file__).parent / "bin" / "go")
    subprocess.run([go, "build", "-o", f"{out}/", "./v2"], cwd=src, env=env, check=True)
    assert [p.name for p in out.iterdir()] == ["shop"]
    params = parse_params({"source": str(src), "app_name": "api", "extra_packages": ["./v2"]})
    assert params.extra_programs() == [("./v2", "shop")]
    message = problems(source=str(src), app_name="shop", extra_packages=["./v2"])
    assert message.startswith("extra_packages: './v2' would be /usr/local/bin/shop, the main ")


def test_extra_packages_are_checked_as_main_package_is(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "shop", SERVICE)
    params = parse_params(
        {"source": str(src), "extra_packages": ["cmd/migrate", "example.com/shop/cmd/shopctl/v2"]}
    )
    assert params.extra_packages == ["./cmd/migrate", "./cmd/shopctl/v2"]
    assert params.extra_programs() == [
        ("./cmd/migrate", "migrate"),
        ("./cmd/shopctl/v2", "shopctl"),
    ]
    for extras, reason in [
        (["./internal/db"], "'./internal/db' is package db, not a main package; main packages"),
        (["./cmd/nope"], "'./cmd/nope' is not a directory of the module"),
        (["."], "'.' is the module's root; build it as main_package"),
        (["example.com/shop"], "'example.com/shop' is the module's root"),
        (["./cmd/migrate", "cmd/migrate/"], "'cmd/migrate/' would be /usr/local/bin/migrate, "),
        (["../x"], "must not contain '..'"),
    ]:
        message = problems(source=str(src), extra_packages=extras)
        assert message.startswith("extra_packages: "), message
        assert reason in message, message
    message = problems(
        source=str(src), main_package="./cmd/migrate", extra_packages=["cmd/migrate"]
    )
    assert message == "extra_packages: 'cmd/migrate' is main_package already; list the others here"
    # The main program's own name is taken.
    message = problems(source=str(src), app_name="migrate", extra_packages=["./cmd/migrate"])
    assert message == (
        "extra_packages: './cmd/migrate' would be /usr/local/bin/migrate, the main package's "
        "program; set app_name to another name"
    )
    # A git source's packages are only known to the engine: the grammar alone.
    remote = parse_params(
        {"source": "https://example.com/shop.git", "extra_packages": ["cmd/migrate"]}
    )
    assert remote.extra_packages == ["./cmd/migrate"]
    assert parse_args([str(src), "--extra-package", "./cmd/migrate", "--extra-package", "x.io/t"])[
        "extra_packages"
    ] == ["./cmd/migrate", "x.io/t"]


def test_the_image_carries_every_program_and_starts_the_main_one(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    src = write_tree(tmp_path / "shop", SERVICE)
    out = tmp_path / "shop.tar"
    params = {
        "source": str(src),
        "output": str(out),
        "version": "1.4.0",
        "platforms": ["linux/amd64", "linux/arm64"],
        "extra_packages": ["./cmd/migrate", "./cmd/shopctl/v2"],
        "run_checks": False,
    }
    state = build(**params)
    assert state.is_completed(), state.message
    archive = f"oci-archive:{out}"
    cfg = inspect_config(archive, "amd64")["config"]
    assert cfg["Entrypoint"] == ["/usr/local/bin/shop"]
    for path, says in [
        ("/usr/local/bin/shop", "server 1.4.0\n"),
        ("/usr/local/bin/migrate", "migrate 1.4.0\n"),  # the same version stamp
        ("/usr/local/bin/shopctl", "shopctl 1.4.0\n"),
    ]:
        binary = extract_file(archive, path, tmp_path / f"bin-{Path(path).name}", "amd64")
        assert binary.stat().st_mode & 0o111, path
        assert subprocess.run([str(binary)], capture_output=True, text=True).stdout == says
    arm = extract_file(archive, "/usr/local/bin/migrate", tmp_path / "migrate-arm64", "arm64")
    assert elf_machine(arm) == 183  # EM_AARCH64: cross-compiled, not the host's
    # One go build for the extra programs per platform, beside the main one's.
    builds = [e for e in dagger_engine.log.snapshot()["execs"] if e[:2] == ["go", "build"]]
    extra_builds = [e for e in builds if e[-2:] == ["./cmd/migrate", "./cmd/shopctl/v2"]]
    assert len(builds) == 4 and len(extra_builds) == 2
    report = {a.key: a for a in artifacts(state.state_details.flow_run_id)}["build-shop"].data
    assert "| platform | binary size | more programs |" in report
    assert "`migrate`" in report and "`shopctl`" in report
    assert set(state.result().extra_binaries["linux/arm64"]) == {"migrate", "shopctl"}

    # Unchanged: served from Prefect's cache with every program, no engine work.
    dagger_engine.log.clear()
    again = build(**params)
    assert again.is_completed(), again.message
    cached = {
        r.name.split("-")[0]: r.state.name
        for r in task_runs(
            again.state_details.flow_run_id, names=("compile linux/arm64", "assemble runtime")
        )
    }
    assert cached["compile linux/arm64"] == cached["assemble runtime"] == "Cached"
    assert not dagger_engine.log.snapshot()["execs"]

    # An extra program's stored file gone: the cached compile is not trusted.
    migrate = extract_file(archive, "/usr/local/bin/migrate", tmp_path / "m1", "amd64")
    stored = prefect_api.results / "gobuild-binaries" / file_sha256(migrate)[7:]
    stored.unlink()
    dagger_engine.log.clear()
    rebuilt = build(**params)
    assert rebuilt.is_completed(), rebuilt.message
    compiles = [
        r.state.name
        for r in task_runs(rebuilt.state_details.flow_run_id)
        if r.name.startswith("compile linux/amd64")
    ]
    assert "Completed" in compiles  # compiled again, beside the cache's answer it set aside
    assert stored.is_file()
    migrate = extract_file(archive, "/usr/local/bin/migrate", tmp_path / "m2", "amd64")
    assert (
        subprocess.run([str(migrate)], capture_output=True, text=True).stdout == "migrate 1.4.0\n"
    )


def test_a_git_library_among_extra_packages_fails_naming_the_main_packages(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    git_daemon: GitDaemon,
    tmp_path: Path,
) -> None:
    repo = write_tree(tmp_path / "shopgit", SERVICE)
    commit_all(repo, "init")
    git_daemon.add_repo("shopgit", repo)
    common = {
        "source": git_daemon.url("shopgit"),
        "version": "1.0.0",
        "output": str(tmp_path / "shop.tar"),
        "run_checks": False,
    }
    state = build(**common, extra_packages=["./cmd/migrate", "./internal/db"])
    assert state.is_failed()
    assert (
        "extra_packages: './internal/db' is not a main package: go build wrote a package "
        "archive, not a program; main packages in this module: ., ./cmd/migrate, "
        "./cmd/shopctl/v2"
    ) in (state.message or "")
    assert not (tmp_path / "shop.tar").exists()

    # Nothing but libraries: go build -o DIR/ itself refuses, and the hint names
    # the parameter.
    only_libraries = build(**common, extra_packages=["./internal/db"])
    assert only_libraries.is_failed()
    exc = only_libraries.result(raise_on_failure=False)
    assert "go: no main packages to build" in exc.stderr  # Go's own words
    assert failure_summary(exc).splitlines()[-1] == (
        "hint: none of extra_packages is a main package (go build -o DIR/ builds main "
        "packages only): name the directories that hold package main"
    )
