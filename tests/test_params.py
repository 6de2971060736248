"""Tests for tasks.params: the flow's only parameter, and so its UI form.

The bad-input cases pin the exact shape users see when a run is rejected: one
line, starting with the field, naming what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tasks import goenv as goenv_module
from tasks.goenv import SUPPORTED_PLATFORMS, default_platform, goenv
from tasks.params import (
    DEFAULT_BUILDER_IMAGE,
    DEFAULT_RUNTIME_IMAGE,
    BuildParams,
    ImageRef,
    ParamsError,
    parse_image_ref,
    parse_params,
)
from tasks.sourcespec import is_git_url

SHA = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture
def module_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "svc"
    directory.mkdir()
    (directory / "go.mod").write_text("module example.com/svc\n\ngo 1.24\n")
    (directory / "main.go").write_text("package main\n\nfunc main() {}\n")
    return directory


@pytest.fixture
def in_module(module_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from inside a Go module so the default source '.' is valid."""
    monkeypatch.chdir(module_dir)
    return module_dir


# --- defaults and the UI schema ----------------------------------------------


def test_prefect_form_has_title_description_and_default_for_every_field() -> None:
    from prefect.utilities.callables import parameter_schema

    def f(params: BuildParams = BuildParams()) -> None:  # noqa: B008 - as the flow will do
        del params

    schema = parameter_schema(f).model_dump()
    json.dumps(schema)  # the UI receives it as JSON
    properties = schema["definitions"]["BuildParams"]["properties"]
    assert set(properties) == set(BuildParams.model_fields)
    for name, prop in properties.items():
        assert prop.get("title"), name
        assert prop.get("description"), name
        assert "default" in prop, name
    assert properties["platforms"]["default"] == [default_platform()]
    assert schema["properties"]["params"]["default"]["builder_image"] == DEFAULT_BUILDER_IMAGE


def test_pydantic_schema_matches_and_forbids_extra() -> None:
    schema = BuildParams.model_json_schema()
    assert schema["additionalProperties"] is False
    for name, prop in schema["properties"].items():
        assert prop.get("title") and prop.get("description") and "default" in prop, name


def test_defaults_construct_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The flow evaluates BuildParams() at import time, possibly outside a module.
    monkeypatch.chdir(tmp_path)
    params = BuildParams()
    assert params.source == "."
    assert params.builder_image == DEFAULT_BUILDER_IMAGE
    assert params.runtime_image == DEFAULT_RUNTIME_IMAGE
    assert params.platforms == [default_platform()]
    assert params.run_checks is True
    assert params.image_refs == [] and params.labels == {} and params.build_tags == []


def test_parse_params_validates_defaults(in_module: Path) -> None:
    params = parse_params({})
    assert params == BuildParams()
    assert params.local_source() == in_module.resolve()


def test_parse_params_rejects_default_source_outside_a_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=r"^module_dir: source '\.' has no go\.mod"):
        parse_params({})


def test_parse_params_accepts_a_model(in_module: Path) -> None:
    model = BuildParams(app_name="svc", platforms=["linux/arm64"])
    assert parse_params(model) == model


def test_default_platform_follows_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for machine, expected in [
        ("x86_64", "linux/amd64"),
        ("AMD64", "linux/amd64"),
        ("aarch64", "linux/arm64"),
        ("arm64", "linux/arm64"),
        ("armv7l", "linux/arm/v7"),
    ]:
        monkeypatch.setattr(goenv_module._platform, "machine", lambda m=machine: m)
        assert default_platform() == expected
        assert BuildParams().platforms == [expected]


# --- rejected inputs ----------------------------------------------------------

Case = Callable[[Path], dict[str, Any]]


def _file(tmp: Path) -> str:
    path = tmp / "file.txt"
    path.write_text("x")
    return str(path)


def _empty_dir(tmp: Path) -> str:
    path = tmp / "empty"
    path.mkdir()
    return str(path)


BAD: list[Any] = [
    pytest.param(
        lambda t: {"source": str(t / "nope")}, "source", "does not exist", id="source-missing"
    ),
    pytest.param(lambda t: {"source": _empty_dir(t)}, "module_dir", "has no go.mod", id="no-gomod"),
    pytest.param(lambda t: {"source": _file(t)}, "source", "is not a directory", id="source-file"),
    pytest.param(
        lambda t: {"source": "file:///srv/git/app.git"},
        "source",
        "does not fetch file:// URLs; give the checkout's directory",
        id="source-file-url",
    ),
    pytest.param(
        lambda t: {"source": "https://github.com/org/app.git", "git_ref": "0123abc"},
        "git_ref",
        "looks like an abbreviated commit; give the full 40-character commit SHA",
        id="ref-short-sha",
    ),
    pytest.param(
        lambda t: {"git_secret_block": "git-token"},
        "git_secret_block",
        "is not a git URL",
        id="git-secret-local",
    ),
    pytest.param(
        lambda t: {"source": "https://h.example/org/app.git", "git_secret_block": "Tok"},
        "git_secret_block",
        "is not a Prefect block name",
        id="git-secret-name",
    ),
    pytest.param(
        lambda t: {"source": "http://tok:x@example.com/org/app.git"},
        "source",
        "embeds credentials",
        id="source-http-credentials",
    ),
    pytest.param(
        lambda t: {"source": "ftp://example.com/app.git"},
        "source",
        "unsupported URL scheme 'ftp'",
        id="source-ftp",
    ),
    pytest.param(
        lambda t: {"source": "https://bob:s3cr3t@github.com/org/app.git"},
        "source",
        "embeds credentials",
        id="source-credentials",
    ),
    pytest.param(lambda t: {"source": ""}, "source", "must not be empty", id="source-empty"),
    pytest.param(lambda t: {"git_ref": "main"}, "git_ref", "local directory", id="ref-local"),
    pytest.param(
        lambda t: {"source": "https://github.com/org/app.git", "git_ref": "--upload-pack=x"},
        "git_ref",
        "'--upload-pack=x' is not a valid branch",
        id="ref-option",
    ),
    pytest.param(
        lambda t: {"source": "git@github.com:org/app.git", "git_ref": "a..b"},
        "git_ref",
        "'a..b'",
        id="ref-dots",
    ),
    pytest.param(lambda t: {"app_name": "My App"}, "app_name", "'My App'", id="app-name"),
    pytest.param(lambda t: {"app_name": "-app"}, "app_name", "starting with", id="app-dash"),
    pytest.param(
        lambda t: {"main_package": "/cmd/server"}, "main_package", "relative", id="pkg-absolute"
    ),
    pytest.param(lambda t: {"main_package": "../other"}, "main_package", "'..'", id="pkg-parent"),
    pytest.param(
        lambda t: {"main_package": "./cmd/my server"},
        "main_package",
        "whitespace",
        id="pkg-space",
    ),
    pytest.param(lambda t: {"main_package": "./..."}, "main_package", "wildcard", id="pkg-wild"),
    pytest.param(lambda t: {"version": "1.0 beta"}, "version", "'1.0 beta'", id="version-space"),
    pytest.param(
        lambda t: {"version": "v1'; rm"}, "version", "starting with a letter", id="version-quote"
    ),
    pytest.param(
        lambda t: {"version_variable": "version"},
        "version_variable",
        "import/path.identifier",
        id="version-variable",
    ),
    pytest.param(lambda t: {"ldflags": "-X 'main.a=b'"}, "ldflags", "quotes", id="ldflags-quote"),
    pytest.param(lambda t: {"ldflags": "-X main.a=`id`"}, "ldflags", "backticks", id="ld-tick"),
    pytest.param(lambda t: {"ldflags": "-X main.a=$(id)"}, "ldflags", "substitution", id="ld-sub"),
    pytest.param(lambda t: {"ldflags": "-s\n-w"}, "ldflags", "newlines", id="ldflags-newline"),
    pytest.param(
        lambda t: {"build_tags": ["netgo", "bad tag"]}, "build_tags", "'bad tag'", id="build-tag"
    ),
    pytest.param(
        lambda t: {"platforms": ["linux/sparc"]},
        "platforms",
        "'linux/sparc' is not a supported platform (supported: linux/amd64, linux/arm64",
        id="platform-unknown",
    ),
    pytest.param(lambda t: {"platforms": []}, "platforms", "at least one", id="platform-empty"),
    pytest.param(
        lambda t: {"platforms": ["linux/amd64", "linux/amd64"]},
        "platforms",
        "'linux/amd64' is listed twice",
        id="platform-duplicate",
    ),
    pytest.param(
        lambda t: {"platforms": "linux/amd64"}, "platforms", "valid list", id="platform-str"
    ),
    pytest.param(
        lambda t: {"builder_image": "golang"}, "builder_image", "not pinned", id="image-untagged"
    ),
    pytest.param(
        lambda t: {"builder_image": "golang:latest"},
        "builder_image",
        "'latest' moves",
        id="image-latest",
    ),
    pytest.param(
        lambda t: {"builder_image": "scratch"}, "builder_image", "no Go toolchain", id="build-scr"
    ),
    pytest.param(
        lambda t: {"runtime_image": "alpine@sha256:" + "a" * 40},
        "runtime_image",
        "malformed sha256 digest",
        id="image-short-digest",
    ),
    pytest.param(
        lambda t: {"runtime_image": "alpine@md5:" + "a" * 32},
        "runtime_image",
        "unsupported digest algorithm 'md5'",
        id="image-md5",
    ),
    pytest.param(
        lambda t: {"runtime_image": "ghcr.io/Org/base:1"},
        "runtime_image",
        "must be lowercase",
        id="image-uppercase",
    ),
    pytest.param(
        lambda t: {"image_refs": ["ghcr.io/org/app"]}, "image_refs", "has no tag", id="ref-no-tag"
    ),
    pytest.param(
        lambda t: {"image_refs": [f"ghcr.io/org/app:v1@{SHA}"]},
        "image_refs",
        "has a digest",
        id="ref-digest",
    ),
    pytest.param(
        lambda t: {"image_refs": ["ghcr.io/org/app:v1\n"]},
        "image_refs",
        "is not a valid image reference",
        id="ref-trailing-newline",
    ),
    pytest.param(
        lambda t: {"image_refs": ["ghcr.io/org/app:v1", "ghcr.io/org/app:v1"]},
        "image_refs",
        "listed twice",
        id="ref-duplicate",
    ),
    pytest.param(lambda t: {"tag_latest": True}, "tag_latest", "image_refs", id="latest-no-refs"),
    pytest.param(
        lambda t: {"registry_secret_block": "My_Secret"},
        "registry_secret_block",
        "'My_Secret' is not a Prefect block name",
        id="secret-block",
    ),
    pytest.param(lambda t: {"output": str(t / "out.zip")}, "output", ".tar", id="output-ext"),
    pytest.param(
        lambda t: {"output": _file(t) + "/out.tar"}, "output", "is a file", id="output-parent"
    ),
    pytest.param(lambda t: {"labels": {"Team": "x"}}, "labels", "key 'Team'", id="label-key"),
    pytest.param(
        lambda t: {"labels": {"org.example.team": "a\nb"}},
        "labels",
        "must not contain newlines",
        id="label-newline",
    ),
    pytest.param(
        lambda t: {"labels": {f"k{i}": "v" for i in range(65)}},
        "labels",
        "at most 64",
        id="label-count",
    ),
    pytest.param(
        lambda t: {"run_checks": "maybe"}, "run_checks", "valid boolean", id="bool-garbage"
    ),
    pytest.param(
        lambda t: {"platfroms": ["linux/amd64"]},
        "platfroms",
        "unknown parameter (did you mean 'platforms'?)",
        id="unknown-field",
    ),
]


@pytest.mark.parametrize(("make", "field", "fragment"), BAD)
def test_bad_input_gives_one_line_naming_field(
    in_module: Path, tmp_path: Path, make: Case, field: str, fragment: str
) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_params(make(tmp_path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{field}: "), message
    assert fragment in message, message
    assert caught.value.problems == [message]


def test_credentials_are_not_echoed(in_module: Path) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_params({"source": "https://bob:s3cr3t@github.com/org/app.git"})
    assert "s3cr3t" not in str(caught.value)


def test_several_problems_stay_on_one_line(in_module: Path) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_params({"platforms": ["linux/sparc"], "app_name": "Bad Name"})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("app_name: ")
    assert "; platforms: 'linux/sparc'" in message
    assert len(caught.value.problems) == 2


def test_not_a_mapping_is_reported() -> None:
    with pytest.raises(ParamsError, match=r"^params: "):
        parse_params(None)  # type: ignore[arg-type]


# --- accepted inputs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "git_ref"),
    [
        ("https://github.com/org/app.git", "v1.2.3"),
        ("https://gitlab.example.com:8443/group/sub/app", ""),
        ("ssh://git@github.com/org/app.git", "main"),
        ("ssh://git@[::1]:2222/org/app.git", ""),
        ("git@github.com:org/app.git", "feature/new-thing"),
        ("http://127.0.0.1:8080/org/app.git", "0123456789abcdef0123456789abcdef01234567"),
        ("git://git.example.com/org/app", "release-1"),
    ],
)
def test_git_sources_accepted(in_module: Path, source: str, git_ref: str) -> None:
    params = parse_params({"source": source, "git_ref": git_ref})
    assert params.is_git_source and is_git_url(source)
    assert params.local_source() is None
    assert params.resolved_app_name() == "app"


@pytest.mark.parametrize(
    ("builder", "runtime"),
    [
        (f"golang@{SHA}", "scratch"),
        (f"golang:1.27@{SHA}", f"alpine:latest@{SHA}"),
        ("docker.io/library/golang:1.27.3-bookworm", "gcr.io/distroless/static-debian12:nonroot"),
        ("127.0.0.1:5000/mirror/golang:1.27", "gcr.io/distroless/static-debian12@" + SHA),
        ("golang:1.27.3-alpine3.22", "cgr.dev/chainguard/static:20250101"),
    ],
)
def test_pinned_images_accepted(in_module: Path, builder: str, runtime: str) -> None:
    params = parse_params({"builder_image": builder, "runtime_image": runtime})
    assert (params.builder_image, params.runtime_image) == (builder, runtime)


def test_everything_set_is_accepted(in_module: Path, tmp_path: Path) -> None:
    (in_module / "cmd/server").mkdir(parents=True)
    (in_module / "cmd/server/main.go").write_text("package main\n\nfunc main() {}\n")
    data: dict[str, Any] = {
        "source": str(in_module),
        "app_name": "svc-api",
        "main_package": "./cmd/server",
        "version": "1.2.3+build.4",
        "version_variable": "example.com/svc/internal/build.Version",
        "ldflags": "-extldflags -static",
        "build_tags": ["netgo", "osusergo", "go1.24"],
        "platforms": list(SUPPORTED_PLATFORMS),
        "run_checks": False,
        "image_refs": [
            "127.0.0.1:5000/team/app:1.2.3",
            "ghcr.io/org/app:v1",
            "localhost:5000/app:dev",
            "[::1]:5000/app:1",
            "org/app:1",
            "app:latest",
        ],
        "tag_commit": True,
        "tag_nightly": True,
        "tag_latest": True,
        "registry_secret_block": "ghcr-creds",
        "output": str(tmp_path / "out" / "svc.oci.tar"),
        "labels": {"org.example.team": "platform", "org.opencontainers.image.vendor": "Ex"},
        "force_rebuild": True,
    }
    params = parse_params(data)
    assert params.model_dump(include=set(data)) == data
    assert params.resolved_version() == "1.2.3+build.4"
    assert params.resolved_app_name() == "svc-api"
    assert params.resolved_output() == tmp_path / "out" / "svc.oci.tar"


@pytest.mark.parametrize(
    ("given", "normalised"),
    [(".", "."), ("./", "."), ("./cmd/server", "./cmd/server"), ("cmd/server/", "./cmd/server")],
)
def test_main_package_normalised(in_module: Path, given: str, normalised: str) -> None:
    (in_module / "cmd/server").mkdir(parents=True)
    (in_module / "cmd/server/main.go").write_text("package main\n\nfunc main() {}\n")
    assert parse_params({"main_package": given}).main_package == normalised


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("https://github.com/org/Cool.Service.git", "cool.service"),
        ("git@github.com:org/My_App.git", "my_app"),
        ("ssh://git@host/org/app/", "app"),
        ("https://example.com/org/Weird+Name!!.git", "weird-name"),
        ("git://host/srv/git/app/.git", "app"),
    ],
)
def test_app_name_derived_from_repository(source: str, expected: str) -> None:
    assert BuildParams(source=source).resolved_app_name() == expected


def test_app_name_derived_from_directory(tmp_path: Path) -> None:
    directory = tmp_path / "My Service"
    directory.mkdir()
    (directory / "go.mod").write_text("module x\n")
    (directory / "main.go").write_text("package main\n\nfunc main() {}\n")
    params = parse_params({"source": str(directory)})
    assert params.resolved_app_name() == "my-service"
    assert params.resolved_output() == Path.cwd().resolve() / "build" / "my-service.oci.tar"


def test_output_default_and_relative(in_module: Path) -> None:
    assert parse_params({}).resolved_output() == in_module.resolve() / "build/svc.oci.tar"
    relative = parse_params({"output": "dist/x.tar"}).resolved_output()
    assert relative.is_absolute() and relative == in_module.resolve() / "dist/x.tar"


# --- resolved_version -----------------------------------------------------------


def _git(directory: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", *args],
        cwd=directory,
        env=env,
        check=True,
        capture_output=True,
    )


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


@needs_git
def test_resolved_version_uses_git_tag(module_dir: Path) -> None:
    _git(module_dir, "init", "-q")
    _git(module_dir, "add", "go.mod")
    _git(module_dir, "commit", "-q", "-m", "init")
    _git(module_dir, "tag", "v1.2.3")
    params = parse_params({"source": str(module_dir)})
    assert params.resolved_version() == "v1.2.3"

    (module_dir / "go.mod").write_text("module example.com/svc\n\ngo 1.25\n")
    assert params.resolved_version() == "v1.2.3-dirty"


@needs_git
def test_resolved_version_sanitises_tag_for_ldflags(module_dir: Path) -> None:
    _git(module_dir, "init", "-q")
    _git(module_dir, "add", "go.mod")
    _git(module_dir, "commit", "-q", "-m", "init")
    _git(module_dir, "tag", "release/2.0")
    assert parse_params({"source": str(module_dir)}).resolved_version() == "release-2.0"


def test_resolved_version_outside_git_is_dev(
    module_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keep git from finding a repository that happens to enclose the temp dir.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(module_dir.parent))
    assert parse_params({"source": str(module_dir)}).resolved_version() == "dev"


def test_resolved_version_without_git_binary_is_dev(
    module_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = parse_params({"source": str(module_dir)})
    monkeypatch.setenv("PATH", str(module_dir))
    assert params.resolved_version() == "dev"


def test_resolved_version_git_source_and_explicit(in_module: Path) -> None:
    assert parse_params({"source": "https://github.com/o/a.git"}).resolved_version() == "dev"
    assert parse_params({"version": "2.0.0"}).resolved_version() == "2.0.0"


# --- helpers ------------------------------------------------------------------


def test_goenv() -> None:
    assert goenv("linux/arm/v7") == {"GOOS": "linux", "GOARCH": "arm", "GOARM": "7"}
    assert goenv("linux/arm/v6")["GOARM"] == "6"
    assert goenv("linux/amd64") == {"GOOS": "linux", "GOARCH": "amd64"}
    assert goenv("linux/386")["GOARCH"] == "386"
    for platform in SUPPORTED_PLATFORMS:
        assert goenv(platform)["GOOS"] == "linux"
    goenv("linux/amd64")["GOARCH"] = "changed"  # callers get a copy
    assert goenv("linux/amd64")["GOARCH"] == "amd64"
    with pytest.raises(ValueError, match="'windows/amd64' is not a supported platform"):
        goenv("windows/amd64")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", ImageRef("", "alpine", "", "")),
        ("org/app:1", ImageRef("", "org/app", "1", "")),
        ("127.0.0.1:5000/team/app:1.2.3", ImageRef("127.0.0.1:5000", "team/app", "1.2.3", "")),
        ("localhost/app:x", ImageRef("localhost", "app", "x", "")),
        (f"ghcr.io/org/app:v1@{SHA}", ImageRef("ghcr.io", "org/app", "v1", SHA)),
    ],
)
def test_parse_image_ref(text: str, expected: ImageRef) -> None:
    parsed = parse_image_ref(text)
    assert parsed == expected
    assert str(parsed) == text


@pytest.mark.parametrize(
    "text", ["", "alpine:", ":1", "a//b:1", "/a:1", "a:b:c", "app:tag\u00e9", "0" * 64]
)
def test_parse_image_ref_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_image_ref(text)


def test_publish_refs(in_module: Path) -> None:
    params = parse_params(
        {
            "image_refs": ["ghcr.io/org/app:v1", "ghcr.io/org/app:v1.0", "reg:5000/app:v1"],
            "tag_commit": True,
            "tag_nightly": True,
            "tag_latest": True,
        }
    )
    refs = params.publish_refs("0123456789abcdef", now=datetime(2026, 3, 4, 23, 30, tzinfo=UTC))
    assert refs == [
        "ghcr.io/org/app:v1",
        "ghcr.io/org/app:v1.0",
        "reg:5000/app:v1",
        "ghcr.io/org/app:sha-0123456",
        "ghcr.io/org/app:nightly-20260304",
        "ghcr.io/org/app:latest",
        "reg:5000/app:sha-0123456",
        "reg:5000/app:nightly-20260304",
        "reg:5000/app:latest",
    ]
    with pytest.raises(ValueError, match="commit hash"):
        params.publish_refs("")
    assert parse_params({}).publish_refs() == []


@pytest.mark.parametrize(
    ("main_package", "expected"),
    [
        ("./cmd/server", "server"),
        ("example.com/tool/v2", "tool"),  # go install's name, not 'v2'
        ("example.com/tool/v1", "v1"),  # only v2 and up are major versions
        ("example.com/app/cmd/Ctl", "ctl"),
    ],
)
def test_app_name_is_go_builds_name_for_a_main_package_below_the_root(
    main_package: str, expected: str
) -> None:
    params = BuildParams(source="https://github.com/org/platform.git", main_package=main_package)
    assert params.resolved_app_name() == expected


def test_two_programs_of_one_module_get_two_outputs(in_module: Path) -> None:
    for name in ("api", "worker"):
        (in_module / "cmd" / name).mkdir(parents=True)
        (in_module / "cmd" / name / "main.go").write_text("package main\n\nfunc main() {}\n")
    api = parse_params({"main_package": "./cmd/api"})
    worker = parse_params({"main_package": "./cmd/worker"})
    assert api.resolved_output().name == "api.oci.tar"
    assert worker.resolved_output().name == "worker.oci.tar"
    assert parse_params({"main_package": "./cmd/api", "app_name": "x"}).resolved_app_name() == "x"
