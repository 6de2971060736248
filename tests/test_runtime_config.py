"""The runtime image's config and files (``tasks/runtimespec.py``): default
arguments, environment, ports, working directory and the files a service reads
from disk, end to end through the flow, the real SDK and the test engine, read
back from the exported image with skopeo, and the binary run as the image would
run it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flows.build import parse_args
from tasks.params import ParamsError, parse_params
from tasks.runtimespec import check_exposed_ports, image_path, parse_runtime_file
from tasks.source import describe_local
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import artifacts, build, run_logs, task_runs
from tests.git_servers import GitDaemon
from tests.gitrepo import commit_all, git
from tests.oci_check import extract_file, inspect_config
from tests.paramcheck import problems
from tests.prefect_fixtures import PrefectAPI
from tests.trees import write_tree

# A service that, like many, reads its templates relative to its working directory.
SERVICE = {
    "go.mod": "module example.com/pages\n\ngo 1.22\n",
    "main.go": """package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "render" {
		fmt.Fprintln(os.Stderr, "usage: pages render")
		os.Exit(2)
	}
	page, err := os.ReadFile("templates/index.html")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%s|mode=%s\\n", page, os.Getenv("PAGES_MODE"))
}
""",
    "templates/index.html": "<h1>hello</h1>",
    "templates/parts/footer.html": "<footer/>",
    "config/pages.yaml": "greeting: hi",
}


# ------------------------------------------------------------------- parameters


def test_ports_are_spelled_as_the_image_config_spells_them() -> None:
    assert check_exposed_ports([8080, "53/udp", "9090/TCP"]) == ["8080/tcp", "53/udp", "9090/tcp"]
    for bad, reason in [
        ("8000-8010", "is a range"),
        ("http", "must be PORT or PORT/PROTOCOL"),
        ("0", "not a port number"),
        ("65536", "not a port number"),
        ("80/sctp", "use tcp or udp"),
    ]:
        with pytest.raises(ValueError, match=reason):
            check_exposed_ports([bad])
    with pytest.raises(ValueError, match="listed twice"):
        check_exposed_ports([8080, "8080/tcp"])


def test_runtime_files_grammar() -> None:
    assert parse_runtime_file("templates/") == ("templates", "templates")
    assert parse_runtime_file("./config/app.yaml:/etc/app/app.yaml") == (
        "config/app.yaml",
        "/etc/app/app.yaml",
    )
    assert parse_runtime_file("web/dist:static") == ("web/dist", "static")
    assert parse_runtime_file("../shared/tpl:/srv/tpl") == ("../shared/tpl", "/srv/tpl")
    # "." is the working directory itself.
    assert image_path(parse_runtime_file("static:."), "/srv") == "/srv"
    assert image_path(parse_runtime_file("static:./web/"), "") == "/app/web"
    for bad, reason in [
        ("/etc/passwd", "must be relative to module_dir"),
        (".", "is not inside the module directory"),
        ("../shared", "is not inside the module directory"),
        ("a:", "empty destination"),
        (":/x", "names no source"),
        ("a:../../x", "must stay inside the working directory"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_runtime_file(bad)


def test_bad_runtime_parameters_are_refused_in_one_line_each(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "svc", SERVICE)
    assert "runtime_env: DB_PASSWORD looks like a secret" in problems(
        source=str(src), runtime_env={"DB_PASSWORD": "hunter2"}
    )
    # A secret in a URL is refused without being echoed.
    message = problems(source=str(src), runtime_env={"DSN": "postgres://u:hunter2@db/x"})
    assert "runtime_env: value of DSN embeds credentials" in message
    assert "hunter2" not in message
    for name in ("GITHUB_TOKEN", "jwt_secret", "AWS_SECRET_ACCESS_KEY", "STRIPE_API_KEY", "PASS"):
        assert f"runtime_env: {name} looks like a secret" in problems(
            source=str(src), runtime_env={name: "x"}
        )
    # Names that only contain such a word pass.
    ok = {"TOKEN_URL": "https://auth/x", "AWS_ACCESS_KEY_ID": "AKIA", "SSO_BYPASS": "1"}
    assert parse_params({"source": str(src), "runtime_env": ok}).runtime_env == ok
    assert "runtime_files: 'static': " in problems(source=str(src), runtime_files=["static"])
    assert "does not exist" in problems(source=str(src), runtime_files=["static"])
    assert "leads outside the source" in problems(
        source=str(src), runtime_files=["../../etc:/etc2"]
    )
    (src / "escape").symlink_to("/etc")
    assert "leads outside the source" in problems(source=str(src), runtime_files=["escape:/x"])
    assert "both go to '/app/templates'" in problems(
        source=str(src), runtime_files=["templates", "config:/app/templates"]
    )
    assert "runtime_user: 'nobody' is a name, and scratch has no /etc/passwd" in problems(
        source=str(src), runtime_image="scratch", runtime_user="nobody"
    )
    assert "runtime_user: 'root user' must be UID[:GID]" in problems(
        source=str(src), runtime_user="root user"
    )
    assert "out of range" in problems(source=str(src), runtime_user="99999999999")
    for user in ("1000", "1000:1000", "nobody", "app:app", "www-data:33"):
        assert parse_params({"source": str(src), "runtime_user": user}).runtime_user == user
    assert "runtime_workdir: 'app' must be an absolute path" in problems(
        source=str(src), runtime_workdir="app"
    )
    assert "runtime_args: 'a\\nb' must not contain newlines" in problems(
        source=str(src), runtime_args=["a\nb"]
    )


def test_a_runtime_file_the_image_user_cannot_read_is_refused(tmp_path: Path) -> None:
    """The engine keeps a host file's mode and makes it root's: a 0600 config would
    fail the service at its start, so the load-source stage refuses it."""
    src = write_tree(tmp_path / "pages", SERVICE)
    (src / "config/pages.yaml").chmod(0o600)
    params = parse_params({"source": str(src), "runtime_files": ["config:/etc/pages"]})
    with pytest.raises(ParamsError) as err:
        describe_local(params)
    assert str(err.value) == (
        "runtime_files: 'config:/etc/pages': the image's user 65532 cannot read "
        "'config/pages.yaml' (mode 0600; the image keeps the mode and makes it root's): "
        "chmod o+r it, or set runtime_user"
    )
    as_root = parse_params({**params.model_dump(), "runtime_user": "0:0"})
    assert describe_local(as_root).runtime_dirs == ["config"]
    (src / "config/pages.yaml").chmod(0o644)
    (src / "templates/parts").chmod(0o700)
    with pytest.raises(ParamsError, match=r"cannot enter 'templates/parts' .* chmod o\+rx"):
        describe_local(parse_params({"source": str(src), "runtime_files": ["templates"]}))
    # A file named alone needs only itself readable.
    assert (
        describe_local(
            parse_params({"source": str(src), "runtime_files": ["templates/index.html"]})
        ).runtime_dirs
        == []
    )


def test_a_monorepo_module_takes_files_from_beside_it(tmp_path: Path) -> None:
    root = tmp_path / "mono"
    write_tree(root / "services/pages", SERVICE)
    write_tree(root, {"shared/tpl/base.html": "<base/>"})
    params = parse_params(
        {
            "source": str(root),
            "module_dir": "services/pages",
            "runtime_files": ["../../shared/tpl:/srv/tpl"],
        }
    )
    assert params.runtime_files == ["../../shared/tpl:/srv/tpl"]
    assert "leads outside the source" in problems(
        source=str(root), module_dir="services/pages", runtime_files=["../../../x:/x"]
    )


def test_command_line_options_map_to_the_parameters() -> None:
    values = parse_args(
        [
            "src",
            "--runtime-arg",
            "serve",
            "--runtime-arg=--addr=:8080",
            "--runtime-env",
            "GIN_MODE=release",
            "--expose",
            "8080",
            "--runtime-workdir",
            "/srv",
            "--runtime-user",
            "1000",
            "--runtime-file",
            "templates",
        ]
    )
    assert values["runtime_args"] == ["serve", "--addr=:8080"]
    assert values["runtime_env"] == {"GIN_MODE": "release"}
    assert values["exposed_ports"] == ["8080"]
    assert values["runtime_workdir"] == "/srv"
    assert values["runtime_user"] == "1000"
    assert values["runtime_files"] == ["templates"]


# ------------------------------------------------------------------- end to end


def page_and_config(archive: str, tmp_path: Path) -> tuple[str, str]:
    """The service's page template and its config, as the image holds them."""
    page = extract_file(archive, "/app/templates/index.html", tmp_path / "index.html")
    conf = extract_file(archive, "/etc/pages/pages.yaml", tmp_path / "pages.yaml")
    return page.read_text(), conf.read_text()


def run_as_the_image(archive: str, config: dict, tmp_path: Path) -> str:
    """Run the image's binary as a container runtime would: its entrypoint and
    default arguments, its environment, from its working directory, which holds
    the templates the image holds there."""
    binary = extract_file(archive, config["Entrypoint"][0], tmp_path / "bin")
    workdir = tmp_path / "root" / config["WorkingDir"].lstrip("/")
    for rel in ("templates/index.html", "templates/parts/footer.html"):
        extract_file(archive, f"{config['WorkingDir']}/{rel}", _parent(workdir / rel))
    env = dict(item.split("=", 1) for item in config["Env"])
    proc = subprocess.run(
        [str(binary), *config["Cmd"]], cwd=workdir, env=env, capture_output=True, text=True
    )
    return proc.stdout + proc.stderr


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_image_gets_args_env_ports_workdir_and_files(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    src = write_tree(tmp_path / "pages", SERVICE)
    out = tmp_path / "pages.tar"
    params = {
        "source": str(src),
        "output": str(out),
        "run_checks": False,
        "runtime_args": ["render"],
        "runtime_env": {"PAGES_MODE": "release"},
        "exposed_ports": ["8080", "53/udp"],
        "runtime_files": ["templates", "config/pages.yaml:/etc/pages/pages.yaml"],
    }
    state = build(**params)
    assert state.is_completed(), state.message
    archive = f"oci-archive:{out}"
    cfg = inspect_config(archive)["config"]
    assert cfg["Entrypoint"] == ["/usr/local/bin/pages"]
    assert cfg["Cmd"] == ["render"]  # not alpine's /bin/sh: the entrypoint cleared it
    assert "PAGES_MODE=release" in cfg["Env"]
    assert any(e.startswith("PATH=") for e in cfg["Env"])  # the base image's kept
    assert set(cfg["ExposedPorts"]) == {"8080/tcp", "53/udp"}
    assert cfg["WorkingDir"] == "/app"  # files placed relative to it, none given
    assert cfg["User"] == "65532"
    conf = extract_file(archive, "/etc/pages/pages.yaml", tmp_path / "pages.yaml")
    assert conf.read_text() == "greeting: hi"
    assert run_as_the_image(archive, cfg, tmp_path) == "<h1>hello</h1>|mode=release\n"
    # The report in the UI says how the container starts, as the tarball says it;
    # the environment by names only.
    arts = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    report = arts["build-pages"].data
    assert "## Image config" in report
    assert "- default arguments: `render`" in report
    assert "- working directory: `/app`" in report
    assert "- exposed ports: `53/udp` `8080/tcp`" in report
    assert "`PAGES_MODE`" in report and "PAGES_MODE=release" not in report

    # Only the image's config changed: the compile is served from cache, the
    # image is assembled again with the new arguments.
    dagger_engine.log.clear()
    params["runtime_args"] = ["render", "--verbose"]
    again = build(**params)
    assert again.is_completed(), again.message
    runs = {
        r.name.split("-")[0]: r.state.name
        for r in task_runs(
            again.state_details.flow_run_id, names=("compile linux/amd64", "assemble runtime")
        )
    }
    assert runs["compile linux/amd64"] == "Cached"
    assert runs["assemble runtime"] == "Completed"
    assert not [e for e in dagger_engine.log.snapshot()["execs"] if e[:2] == ["go", "build"]]
    assert inspect_config(archive)["config"]["Cmd"] == ["render", "--verbose"]

    # A changed template is a changed image, though the binary is the same.
    (src / "templates/index.html").write_text("<h1>changed</h1>")
    changed = build(**params)
    assert changed.is_completed(), changed.message
    page = extract_file(archive, "/app/templates/index.html", tmp_path / "index.html")
    assert page.read_text() == "<h1>changed</h1>"


def test_runtime_files_reached_through_symlinks_land_as_their_targets(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    """A common layout: ``config`` links to the environment's directory. The engine
    reads a path inside the snapshot, following links (core/directory.go), so the
    image gets the files the link leads to."""
    src = write_tree(
        tmp_path / "pages", {**SERVICE, "deploy/prod/templates/index.html": "<h1>prod</h1>"}
    )
    (src / "templates").rename(src / "templates.dev")
    (src / "templates").symlink_to("deploy/prod/templates")
    (src / "pages.yaml").symlink_to("config/pages.yaml")
    out = tmp_path / "linked.tar"
    params = {"runtime_files": ["templates", "pages.yaml:/etc/pages/pages.yaml"]}
    state = build(source=str(src), output=str(out), run_checks=False, **params)
    assert state.is_completed(), state.message
    assert page_and_config(f"oci-archive:{out}", tmp_path) == ("<h1>prod</h1>", "greeting: hi")


def test_a_runtime_file_git_ignores_is_refused_before_engine_work(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    src = write_tree(tmp_path / "pages", {**SERVICE, ".gitignore": "templates/\n"})
    git(src, "init", "-q")
    commit_all(src, "first")
    state = build(
        source=str(src),
        output=str(tmp_path / "p.tar"),
        run_checks=False,
        runtime_files=["templates"],
    )
    assert state.is_failed()
    assert "runtime_files: 'templates': nothing under 'templates' is sent" in state.message
    assert "use_gitignore=false" in state.message
    assert dagger_engine.log.snapshot()["requests"] == []
    # Sent as docker build sends it, the same files go into the image.
    done = build(
        source=str(src),
        output=str(tmp_path / "p.tar"),
        run_checks=False,
        runtime_files=["templates"],
        runtime_workdir="/srv/pages",
        runtime_user="1000:1000",
        use_gitignore=False,
    )
    assert done.is_completed(), done.message
    archive = f"oci-archive:{tmp_path / 'p.tar'}"
    config = inspect_config(archive)["config"]
    assert config["WorkingDir"] == "/srv/pages"
    assert config["User"] == "1000:1000"
    footer = extract_file(archive, "/srv/pages/templates/parts/footer.html", tmp_path / "f")
    assert footer.read_text() == "<footer/>"


def test_git_source_runtime_files_are_checked_by_the_engine_before_the_compile(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    repo = write_tree(tmp_path / "pages-repo", SERVICE)
    git(repo, "init", "-q")
    commit_all(repo, "first")
    url = git_daemon.add_repo("pages-repo", repo)
    missing = build(
        source=url,
        output=str(tmp_path / "g.tar"),
        run_checks=False,
        runtime_files=["templates", "static"],
    )
    assert missing.is_failed()
    assert "runtime_files: 'static': 'static' is not in" in missing.message
    assert not [e for e in dagger_engine.log.snapshot()["execs"] if e[:2] == ["go", "build"]]

    done = build(
        source=url,
        output=str(tmp_path / "g.tar"),
        run_checks=False,
        runtime_args=["render"],
        runtime_files=["templates", "config/pages.yaml:/etc/pages/pages.yaml"],
    )
    assert done.is_completed(), done.message
    archive = f"oci-archive:{tmp_path / 'g.tar'}"
    assert page_and_config(archive, tmp_path) == ("<h1>hello</h1>", "greeting: hi")
    # The engine lists a remote once per session, and this session is the test's
    # (DAGGER_SESSION_PORT): the run says what that means for a moving ref.
    logs = run_logs(done.state_details.flow_run_id)
    assert any("which lists a git remote once" in m and "Pin git_ref" in m for m in logs)
