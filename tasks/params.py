"""The parameters of a multistage Go image build, in one place.

The `multistage-build` flow takes a single `BuildParams` argument, so this
model is also the form Prefect renders in its UI: every field carries a title,
a description and a default, and unknown fields are rejected so that a typo in
a deployment's parameters fails loudly instead of being ignored.

Validation is deliberately local and cheap: it may look at the local
filesystem (a local source must be a Go module), but it never touches the
network or the Dagger engine, because Prefect validates parameters before a
run starts and in the UI while a user types. Anything that needs the outside
world (such as `git describe`) lives in the `resolved_*` methods instead.

The grammars of single fields live where a reader looks for them, and this
model applies them: the source and git ref in `tasks.sourcespec`, platforms and
Go settings in `tasks.goenv`, the programs in `tasks.programs`, the
module's go.mod and go.work in `tasks.gomod` and `tasks.goversion`, image
references in `tasks.imageref` (the distribution/reference grammar).
"""

from __future__ import annotations

import difflib
import re
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

from tasks.goconstraints import targets
from tasks.goenv import (
    GO_ENV_KEYS,
    SUPPORTED_PLATFORMS,
    check_go_env,
    check_platforms,
    default_platform,
)
from tasks.gomod import check_local_dirs, find_modules, module_path
from tasks.gopackages import check_main_package, exec_name
from tasks.goversion import check_builder_go, check_workspace_go
from tasks.imageref import ImageRef, check_pinned_image, parse_image_ref, show
from tasks.ldflags import DEFAULT_VERSION_VARIABLE, check_ldflags
from tasks.programs import (
    ModuleOnDisk,
    check_extra_programs,
    check_program,
    go_work_sent,
    local_module,
)
from tasks.runtimespec import (
    FILES_WORKDIR,
    RUNTIME_USER,
    Placement,
    check_exposed_ports,
    check_runtime_args,
    check_runtime_env,
    check_runtime_files,
    check_user,
    check_workdir,
    placements,
)
from tasks.sourcespec import check_git_ref, check_source, is_git_url, repository_name

__all__ = [
    "DEFAULT_BUILDER_IMAGE",
    "DEFAULT_RUNTIME_IMAGE",
    "BuildParams",
    "ImageRef",
    "ParamsError",
    "parse_image_ref",
    "parse_params",
]

DEFAULT_BUILDER_IMAGE = "golang:1.27.3-bookworm"
DEFAULT_RUNTIME_IMAGE = "alpine:3.22.2"
DEFAULT_TIMEOUT_MINUTES = 120.0  # hours past any normal build, bounded within a nightly cycle
MAX_TIMEOUT_MINUTES = 1440.0

# --- the grammars of the fields checked here ------------------------------------
_APP_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,127}")
_VERSION_VARIABLE_RE = re.compile(
    r"(?P<path>[A-Za-z0-9_~+-][A-Za-z0-9_.~+-]*(?:/[A-Za-z0-9_.~+-]+)*)"
    r"\.(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
)
_BUILD_TAG_RE = re.compile(r"[A-Za-z0-9_.]+")
_LABEL_KEY_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_BLOCK_NAME_RE = re.compile(r"[a-z0-9-]+")
_MAX_LABELS = 64


class ParamsError(ValueError):
    """Build parameters were rejected.

    The message is a single line of `field: reason` items joined by "; " so it
    reads well in a Prefect flow-run state message and in a log line; the
    individual items stay available in `problems` for callers that want them.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _relative_dir(value: str, what: str) -> str:
    """A clean ``a/b`` path inside the source, or ``.``; never outside it."""
    if value.startswith("/") or "\\" in value or re.match(r"[A-Za-z]:", value):
        raise ValueError(f"{show(value)} must be a path relative to the {what}")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError(f"{show(value)} must not contain whitespace")
    segments = [seg for seg in value.split("/") if seg not in ("", ".")]
    if ".." in segments:
        raise ValueError(f"{show(value)} must not contain '..' (stay inside the {what})")
    return "/".join(segments) or "."


def _sanitize_name(raw: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", raw.lower())
    name = re.sub(r"^[^a-z0-9]+", "", name)[:63]
    return name.rstrip("._-") or "app"


def _platforms_schema_default(schema: JsonDict) -> None:
    # pydantic leaves default_factory fields without a JSON-schema default, and
    # the Prefect form should show the value a run would actually use.
    schema["default"] = [default_platform()]


def _sanitize_version(described: str) -> str:
    version = re.sub(r"[^0-9A-Za-z._+-]+", "-", described)
    version = re.sub(r"^[^0-9A-Za-z]+", "", version)[:128]
    return version if _VERSION_RE.fullmatch(version) else ""


class BuildParams(BaseModel):
    """Everything a `multistage-build` run needs to know, validated up front.

    Field validators run only on values that were provided; pydantic does not
    validate defaults, which keeps `BuildParams()` usable as a flow signature
    default even where the working directory is not a Go module. Use
    `parse_params` to validate defaults too.
    """

    model_config = ConfigDict(extra="forbid", title="Build parameters")

    source: str = Field(
        default=".",
        title="Source",
        description=(
            "Go module to build: a local directory containing go.mod (a relative path starts "
            "at the working directory of the process that runs the build), or a git URL the "
            "Dagger engine fetches: https://, http://, ssh://, git:// or git@host:org/repo.git."
        ),
    )
    git_ref: str = Field(
        default="",
        title="Git ref",
        description=(
            "Branch, tag or full 40-character commit SHA of a git source; empty means the "
            "remote HEAD."
        ),
    )
    git_secret_block: str = Field(
        default="",
        title="Git secret block",
        description=(
            "Name of a Prefect Secret block holding an HTTP(S) token for a private git "
            "source (or JSON with username and token); sent to the engine as a Dagger secret."
        ),
    )
    use_gitignore: bool = Field(
        default=True,
        title="Apply .gitignore",
        description=(
            "For a local git checkout, send only what git would commit (tracked files and "
            "untracked ones .gitignore does not ignore). Off sends the directory as "
            "docker build does, .dockerignore alone deciding: for generated files the "
            "build needs that git ignores, such as a web app's dist/ under //go:embed."
        ),
    )
    app_name: str = Field(
        default="",
        title="App name",
        description=(
            "Binary and image name: lowercase letters, digits, '.', '_' and '-', at most 63 "
            "characters. Empty takes go build's name for the main package ('server' for "
            "'./cmd/server'), or for the module's root the module directory in a monorepo, "
            "else the source directory or repository name."
        ),
    )
    module_dir: str = Field(
        default=".",
        title="Module directory",
        description=(
            "Directory of the Go module (its go.mod) inside the source, for monorepos, e.g. "
            "'services/api'. The whole source is sent, so replace directives and go.work "
            "workspaces can reach sibling modules."
        ),
    )
    main_package: str = Field(
        default=".",
        title="Main package",
        description="Go package to build, relative to the module directory, e.g. '.' or "
        "'./cmd/server', or its import path (example.com/app/cmd/server).",
    )
    extra_packages: list[str] = Field(
        default=[],
        title="More programs",
        description=(
            "More main packages to build into the image beside the main package, with "
            "the same flags, tags and version, e.g. './cmd/migrate'. Each lands in "
            "/usr/local/bin under go build's name for it ('migrate'); the entrypoint "
            "stays the main package's program."
        ),
    )
    version: str = Field(
        default="",
        title="Version",
        description=(
            "Version stamped into the binary. Empty uses 'git describe --tags --always --dirty' "
            "for a local git checkout, else 'dev'."
        ),
    )
    version_variable: str = Field(
        default=DEFAULT_VERSION_VARIABLE,
        title="Version variable",
        description=(
            "Go string variable that receives the version (through -ldflags -X), written "
            "import/path.name, e.g. main.version."
        ),
    )
    ldflags: str = Field(
        default="",
        title="Extra ldflags",
        description=(
            "Additional Go linker flags, appended after '-s -w' and the version flag. "
            "${VERSION}, ${COMMIT}, ${SHORT_COMMIT}, ${COMMIT_DATE} (the source's time, "
            "RFC 3339) and ${COMMIT_TIMESTAMP} are expanded, e.g. "
            "'-X main.commit=${COMMIT} -X main.date=${COMMIT_DATE}'; $$ is a literal $."
        ),
    )
    build_tags: list[str] = Field(
        default=[],
        title="Build tags",
        description="Go build tags passed with -tags.",
    )
    platforms: list[str] = Field(
        default_factory=lambda: [default_platform()],
        json_schema_extra=_platforms_schema_default,
        title="Platforms",
        description=(
            "Target platforms, defaulting to this host's. Supported: "
            + ", ".join(SUPPORTED_PLATFORMS)
            + "."
        ),
    )
    builder_image: str = Field(
        default=DEFAULT_BUILDER_IMAGE,
        title="Builder image",
        description=(
            "Go toolchain image of the build stage, pinned by version tag or digest; "
            "its Go must be at least the module's go line (golang images never fetch another)."
        ),
    )
    runtime_image: str = Field(
        default=DEFAULT_RUNTIME_IMAGE,
        title="Runtime image",
        description=(
            "Base image of the final stage, pinned by version tag or digest; 'scratch' and "
            "distroless images (gcr.io/distroless/static-debian12:nonroot) work too."
        ),
    )
    runtime_args: list[str] = Field(
        default=[],
        title="Default arguments",
        description=(
            "Arguments after the entrypoint when the container is started without any "
            '(the image\'s CMD), e.g. ["serve", "--addr=:8080"].'
        ),
    )
    runtime_env: dict[str, str] = Field(
        default={},
        title="Runtime environment",
        description=(
            'Environment variables of the image, e.g. {"GIN_MODE": "release"}. Readable '
            "by anyone who can pull the image, so no secrets: names ending in PASSWORD, "
            "TOKEN, SECRET, API_KEY... are refused."
        ),
    )
    exposed_ports: list[str] = Field(
        default=[],
        title="Exposed ports",
        description="Ports the service listens on (the image's EXPOSE): 8080, 8080/tcp or 53/udp.",
    )
    runtime_workdir: str = Field(
        default="",
        title="Working directory",
        description=(
            "Absolute working directory of the image. Empty keeps the base image's, or is "
            f"{FILES_WORKDIR} when runtime files are placed relative to it."
        ),
    )
    runtime_user: str = Field(
        default=RUNTIME_USER,
        title="Runtime user",
        description=(
            "User the container runs as: UID[:GID], or a name the base image knows. The "
            "default, 65532, is distroless's nonroot: numeric, so no /etc/passwd is needed."
        ),
    )
    runtime_files: list[str] = Field(
        default=[],
        title="Runtime files",
        description=(
            "Files and directories of the module the binary reads at run time, copied into "
            "the image: SRC or SRC:DEST, SRC relative to the module directory, DEST absolute "
            "or relative to the working directory (default: SRC there), e.g. "
            '["templates", "migrations:/migrations"].'
        ),
    )
    run_checks: bool = Field(
        default=True,
        title="Run checks",
        description="Run go vet and go test before building, and stop if they fail.",
    )
    run_vet: bool = Field(
        default=True,
        title="Run go vet",
        description=(
            "Part of the checks: off leaves go vet out and keeps go test, which runs vet's "
            "high-confidence analyzers itself; for projects whose code go vet's other "
            "analyzers (composites, copylocks...) flag but that build and test."
        ),
    )
    go_env: dict[str, str] = Field(
        default={},
        title="Go environment",
        description=(
            "Go settings for fetching modules, set in the builder before 'go mod download': "
            + ", ".join(GO_ENV_KEYS)
            + '. E.g. {"GOPROXY": "https://goproxy.corp.example", '
            '"GOPRIVATE": "corp.example"}. GOFLAGS is added to the build\'s own '
            "-mod flag. No credentials here: put them in Go module credentials "
            "(go_auth_secret_block)."
        ),
    )
    go_auth_secret_block: str = Field(
        default="",
        title="Go module credentials",
        description=(
            "Name of a Prefect Secret block with credentials for private modules: .netrc text "
            "('machine HOST[:PORT] login USER password TOKEN'), or JSON {\"machine\", "
            '"login", "password"} (or a list of them). Mounted in the builder as a '
            "Dagger secret at /root/.netrc; Go sends it over HTTPS only."
        ),
    )
    image_refs: list[str] = Field(
        default=[],
        title="Image references",
        description=(
            "Tagged references to publish, e.g. ghcr.io/org/app:v1 or "
            "127.0.0.1:5000/team/app:1.2.3. "
            "Empty means export an OCI tarball only."
        ),
    )
    tag_commit: bool = Field(
        default=False,
        title="Tag with commit",
        description="Also push each image as sha-COMMIT (the first 7 characters of the commit).",
    )
    tag_nightly: bool = Field(
        default=False,
        title="Tag as nightly",
        description="Also push each image as nightly-YYYYMMDD (UTC).",
    )
    tag_latest: bool = Field(
        default=False,
        title="Tag as latest",
        description="Also push each image as latest.",
    )
    registry_secret_block: str = Field(
        default="",
        title="Registry secret block",
        description=(
            "Name of a Prefect Secret block holding registry credentials: one "
            '(\'username:password\' or {"username": ..., "password": ...}) for the '
            'registries published to, or one per registry host ({"ghcr.io": {...}} or '
            "a Docker config.json), also used to pull a base image from that host. "
            "Empty: anonymous."
        ),
    )
    output: str = Field(
        default="",
        title="Output tarball",
        description=(
            "Path of the exported OCI tarball (.tar). Empty means build/APP.oci.tar, APP "
            "being the app name; a relative path starts at the working directory of the "
            "process that runs the build."
        ),
    )
    labels: dict[str, str] = Field(
        default={},
        title="Labels",
        description=(
            f"Extra OCI image labels, e.g. org.example.team; at most {_MAX_LABELS}. "
            "OCI's own keys (org.opencontainers.image.description, .licenses...) are also "
            "set as the manifests' annotations, as the build's own are."
        ),
    )
    force_rebuild: bool = Field(
        default=False,
        title="Force rebuild",
        description="Ignore cached results and rebuild every step.",
    )
    timeout_minutes: float = Field(
        default=DEFAULT_TIMEOUT_MINUTES,
        title="Timeout (minutes)",
        description=(
            "Stop the build, failed, once it has run this long (from when it holds an engine "
            "slot): a hung test, registry or engine then frees its worker and slot instead of "
            "holding them. Up to 1440 (a day); fractions allowed."
        ),
    )

    # --- validators (field order matters: later ones read earlier values) ---

    @field_validator("source")
    @classmethod
    def _valid_source(cls, value: str) -> str:
        return check_source(value)

    @field_validator("git_ref")
    @classmethod
    def _valid_git_ref(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return value
        check_git_ref(value)
        source = info.data.get("source")
        if source is not None and not is_git_url(source):
            raise ValueError(
                f"{show(value)} given, but source {show(source)} is a local directory; "
                "a ref only applies to git sources"
            )
        return value

    @field_validator("use_gitignore")
    @classmethod
    def _gitignore_is_local(cls, value: bool, info: ValidationInfo) -> bool:
        # Off would silently do nothing: a git URL's tree holds committed files only.
        source = info.data.get("source")
        if not value and source is not None and is_git_url(source):
            raise ValueError(
                f"false, but source {show(source)} is a git URL, whose tree holds only "
                "committed files; it applies to a local checkout"
            )
        return value

    @field_validator("app_name")
    @classmethod
    def _valid_app_name(cls, value: str) -> str:
        if value and not _APP_NAME_RE.fullmatch(value):
            raise ValueError(
                f"{show(value)} must be 1-63 lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("module_dir")
    @classmethod
    def _valid_module_dir(cls, value: str, info: ValidationInfo) -> str:
        value = _relative_dir(value or ".", "source")
        source = info.data.get("source")
        if source is None or is_git_url(source):
            return value  # a git tree is only known to the engine
        module = Path(source).expanduser() / value
        if not (module / "go.mod").is_file():
            where = f"source {show(source)}" + (f", directory {value!r}," if value != "." else "")
            found = find_modules(Path(source).expanduser())
            if found:
                listed = ", ".join(repr(d) for d in found)
                raise ValueError(f"{where} has no go.mod; set module_dir to a module: {listed}")
            hint = "" if value != "." else "; for a module in a subdirectory set module_dir"
            raise ValueError(f"{where} has no go.mod (expected the root of a Go module{hint})")
        sent = go_work_sent(Path(source).expanduser(), value, info.data.get("use_gitignore"))
        check_local_dirs(Path(source).expanduser(), value, sent)  # replace/use paths go with it
        check_workspace_go(Path(source).expanduser(), value, sent)
        return value

    @field_validator("main_package")
    @classmethod
    def _valid_main_package(cls, value: str, info: ValidationInfo) -> str:
        """Normalise a path to './path' because Go reads a bare 'cmd/x' as a
        standard-library path. An import path (its first element has a dot, as
        ko and ``go install`` take them) stays one, for ``go build`` to resolve in
        the module graph; in a local module, one inside the module becomes its
        './path'. Then, in a local module, refuse a directory that surely holds no
        program (``tasks/gopackages.py``: Go would build a library archive without
        a word)."""
        return check_program(value, cls._local_module(info))

    @field_validator("extra_packages")
    @classmethod
    def _valid_extra_packages(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """Each one as ``main_package`` is checked, each on a path of its own
        (``tasks/programs.check_extra_programs``)."""
        if "main_package" not in info.data or "app_name" not in info.data:
            return value  # reported as their own problems
        main = cls.model_construct(**info.data).resolved_app_name()
        local = cls._local_module(info)
        return check_extra_programs(value, local, info.data["main_package"], main)

    @model_validator(mode="after")
    def _programs_build_for_every_platform(self) -> BuildParams:
        """In a local module, ``main_package`` and each of ``extra_packages`` must
        be a program on every platform, as ``go build`` compiles it there: which
        files it compiles depends on ``platforms`` and ``build_tags`` (build
        constraints, ``tasks/goconstraints.py``), fields that come after the
        packages, so this is checked once all are valid. Reported under the
        package's own field. Skipped for fields not given (``BuildParams()``
        validates no defaults; :func:`parse_params` gives them all)."""
        given = self.model_fields_set
        if not {"source", "module_dir", "platforms", "build_tags"} <= given:
            return self
        source = self.local_source()
        if source is None:
            return self
        module = source / self.module_dir
        build = targets(self.platforms, self.build_tags, self.go_env.get("GOFLAGS", ""))
        checked = [("main_package", self.main_package)] if "main_package" in given else []
        if "extra_packages" in given:
            checked += [("extra_packages", p) for p in self.extra_packages]
        for name, package in checked:
            if package == "." or package.startswith("./"):
                try:
                    check_main_package(module, package, build)
                except ValueError as exc:
                    raise FieldProblem(name, str(exc)) from None
        return self

    @field_validator("version")
    @classmethod
    def _valid_version(cls, value: str) -> str:
        if value and not _VERSION_RE.fullmatch(value):
            raise ValueError(
                f"{show(value)} must be 1-128 of letters, digits, '.', '_', '+' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("version_variable")
    @classmethod
    def _valid_version_variable(cls, value: str) -> str:
        match = _VERSION_VARIABLE_RE.fullmatch(value)
        if match is None or ".." in match["path"]:
            raise ValueError(
                f"{show(value)} must be import/path.identifier, e.g. main.version "
                "or example.com/app/internal/build.Version"
            )
        return value

    @field_validator("ldflags")
    @classmethod
    def _valid_ldflags(cls, value: str) -> str:
        return check_ldflags(value)

    @field_validator("build_tags")
    @classmethod
    def _valid_build_tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not _BUILD_TAG_RE.fullmatch(tag):
                raise ValueError(
                    f"{show(tag)} is not a valid build tag (letters, digits, '_' and '.')"
                )
        return value

    @field_validator("platforms")
    @classmethod
    def _valid_platforms(cls, value: list[str]) -> list[str]:
        return check_platforms(value)

    @field_validator("builder_image")
    @classmethod
    def _valid_builder_image(cls, value: str, info: ValidationInfo) -> str:
        """Pinned, and for a local module, new enough for its ``go`` line
        (``tasks/goversion.py``): the golang images never fetch a newer Go."""
        value = check_pinned_image(value, allow_scratch=False)
        local = cls._local_module(info)
        if local is not None:
            check_builder_go(value, *local)
        return value

    @staticmethod
    def _local_module(info: ValidationInfo) -> ModuleOnDisk | None:
        """``tasks/programs.local_module`` of the fields validated so far."""
        data = info.data
        return local_module(data.get("source"), data.get("module_dir"), data.get("use_gitignore"))

    @field_validator("runtime_image")
    @classmethod
    def _valid_runtime_image(cls, value: str) -> str:
        return check_pinned_image(value, allow_scratch=True)

    @field_validator("runtime_args")
    @classmethod
    def _valid_runtime_args(cls, value: list[str]) -> list[str]:
        return check_runtime_args(value)

    @field_validator("runtime_env")
    @classmethod
    def _valid_runtime_env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_runtime_env(value)

    @field_validator("exposed_ports", mode="before")
    @classmethod
    def _valid_exposed_ports(cls, value: Any) -> Any:
        # Before pydantic's str check: a deployment's YAML or JSON says 8080, not "8080".
        if isinstance(value, list):
            return check_exposed_ports(value)
        return value

    @field_validator("runtime_workdir")
    @classmethod
    def _valid_runtime_workdir(cls, value: str) -> str:
        return check_workdir(value)

    @field_validator("runtime_user")
    @classmethod
    def _valid_runtime_user(cls, value: str, info: ValidationInfo) -> str:
        return check_user(value, info.data.get("runtime_image"))

    @field_validator("runtime_files")
    @classmethod
    def _valid_runtime_files(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """The grammar, then, in a local module, that each source exists (a git
        tree is only known to the engine, which the load-source stage asks)."""
        module_dir = info.data.get("module_dir")
        if module_dir is None:
            return value  # reported as module_dir's own problem
        resolved = check_runtime_files(value, module_dir, info.data.get("runtime_workdir") or "")
        local = cls._local_module(info)
        if local is None:
            return value
        root = local[0].resolve()
        for place in resolved:
            path = root / place.source
            if not path.exists():
                raise ValueError(f"{show(place.spec)}: {path} does not exist")
            if not path.resolve().is_relative_to(root):
                raise ValueError(
                    f"{show(place.spec)}: {path} leads outside the source {str(root)!r}"
                )
        return value

    @field_validator("image_refs")
    @classmethod
    def _valid_image_refs(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for ref in value:
            parsed = parse_image_ref(ref)
            if parsed.digest:
                raise ValueError(
                    f"{show(ref)} has a digest; a digest names content, publish to a tag instead"
                )
            if not parsed.tag:
                raise ValueError(
                    f"{show(ref)} has no tag; name the tag to publish, "
                    f"e.g. {parsed.repository}:1.0.0"
                )
            if ref in seen:
                raise ValueError(f"{show(ref)} is listed twice")
            seen.add(ref)
        return value

    @field_validator("tag_commit", "tag_nightly", "tag_latest")
    @classmethod
    def _extra_tags_need_refs(cls, value: bool, info: ValidationInfo) -> bool:
        # These only add tags next to image_refs; without any, they would
        # silently do nothing.
        if value and info.data.get("image_refs") == []:
            raise ValueError("needs at least one entry in image_refs to add the tag to")
        return value

    @field_validator("git_secret_block")
    @classmethod
    def _valid_git_block(cls, value: str, info: ValidationInfo) -> str:
        value = cls._valid_block_name(value)
        source = info.data.get("source")
        if value and source is not None and not is_git_url(source):
            raise ValueError(f"given, but source {show(source)} is not a git URL")
        return value

    @field_validator("registry_secret_block", "go_auth_secret_block")
    @classmethod
    def _valid_block_name(cls, value: str) -> str:
        if value and not _BLOCK_NAME_RE.fullmatch(value):
            raise ValueError(
                f"{show(value)} is not a Prefect block name (lowercase letters, digits and '-')"
            )
        return value

    @field_validator("go_env")
    @classmethod
    def _valid_go_env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_go_env(value)

    @field_validator("output")
    @classmethod
    def _valid_output(cls, value: str) -> str:
        if not value:
            return value
        if "\n" in value or "\r" in value or "\x00" in value:
            raise ValueError(f"{show(value)} must not contain newlines or NUL")
        path = Path(value).expanduser()
        if path.suffix != ".tar" or path.name == ".tar":
            raise ValueError(f"{show(value)} must name a file ending in .tar")
        if path.is_dir():
            raise ValueError(f"{show(value)} is an existing directory")
        for ancestor in path.parents:
            if ancestor.exists():
                if not ancestor.is_dir():
                    raise ValueError(
                        f"{show(value)} cannot be created: {str(ancestor)!r} is a file"
                    )
                break
        return value

    @field_validator("timeout_minutes")
    @classmethod
    def _valid_timeout(cls, value: float) -> float:
        if not 0 < value <= MAX_TIMEOUT_MINUTES:  # NaN too
            raise ValueError(f"{value:g} must be more than 0 and at most {MAX_TIMEOUT_MINUTES:g}")
        return value

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > _MAX_LABELS:
            raise ValueError(f"{len(value)} labels given; at most {_MAX_LABELS} are allowed")
        for key, text in value.items():
            if not _LABEL_KEY_RE.fullmatch(key):
                raise ValueError(
                    f"key {show(key)} must be lowercase letters, digits, '.', '_' or '-', "
                    "e.g. org.example.team"
                )
            if "\n" in text or "\r" in text or "\x00" in text:
                raise ValueError(f"value of {key!r} must not contain newlines: {show(text)}")
        return value

    # --- derived values -------------------------------------------------------

    @property
    def is_git_source(self) -> bool:
        return is_git_url(self.source)

    @property
    def surely_needs_engine(self) -> bool:
        """Known from the parameters alone, before the source is read: a git source
        (the engine resolves the ref), a forced build, or a publishing one (the
        push is the engine's). Any other build may be served from Prefect's cache
        and must not open a Dagger session before it knows."""
        return self.is_git_source or self.force_rebuild or bool(self.image_refs)

    def local_source(self) -> Path | None:
        """Absolute path of a local source, or None for a git source."""
        if self.is_git_source:
            return None
        return Path(self.source).expanduser().resolve()

    def resolved_app_name(self) -> str:
        """The app name; else the name ``go build`` gives ``main_package``'s program
        when that is not the module's root (``./cmd/server`` is ``server``, so two
        programs of one repository get two names, as the usual ``cmd/<name>``
        layout means); else the module directory's name in a monorepo, or the
        source's."""
        if self.app_name:
            return self.app_name
        if self.main_package not in ("", "."):
            return _sanitize_name(exec_name(self.main_package))
        if self.module_dir not in ("", "."):
            return _sanitize_name(self.module_dir.rsplit("/", 1)[-1])
        return _sanitize_name(repository_name(self.source))

    def resolved_version(self) -> str:
        """The version to stamp; never raises, because a missing tag must not fail a build.

        Remote sources give 'dev' since describing them would need a clone;
        the flow can pass an explicit `version` instead.
        """
        if self.version:
            return self.version
        directory = self.local_source()
        if directory is None:
            return "dev"
        try:
            result = subprocess.run(
                ["git", "-C", str(directory), "describe", "--tags", "--always", "--dirty"],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.SubprocessError, ValueError):
            return "dev"
        if result.returncode != 0:
            return "dev"
        return _sanitize_version(result.stdout.strip()) or "dev"

    def resolved_output(self) -> Path:
        """Absolute tarball path, resolved against the working directory of the run."""
        raw = self.output or f"build/{self.resolved_app_name()}.oci.tar"
        return Path(raw).expanduser().resolve()

    def extra_programs(self) -> list[tuple[str, str]]:
        """``extra_packages`` as (package, file name in /usr/local/bin): the name
        ``go build -o DIR/`` gives it, as it is (a file name, not an image name)."""
        source = self.local_source()
        own = module_path(source / self.module_dir) if source and self.extra_packages else None
        return [(p, exec_name(p, own)) for p in self.extra_packages]

    def runtime_placements(self) -> tuple[str, list[Placement]]:
        """The image's working directory and each of ``runtime_files`` resolved
        (``tasks.runtimespec.placements``)."""
        return placements(self.runtime_files, self.module_dir, self.runtime_workdir)

    def publish_refs(self, commit: str = "", now: datetime | None = None) -> list[str]:
        """All references to push: `image_refs` plus the tag_* extras for each repository.

        `commit` is a full or abbreviated hash (its first 7 characters are used,
        git's default abbreviation); `now` should be timezone-aware and
        defaults to the current UTC time.
        """
        extra: list[str] = []
        if self.tag_commit:
            if not re.fullmatch(r"[0-9a-f]{7,64}", commit):
                raise ValueError(f"tag_commit needs a commit hash, got {show(commit)}")
            extra.append(f"sha-{commit[:7]}")
        if self.tag_nightly:
            moment = (now or datetime.now(UTC)).astimezone(UTC)
            extra.append(f"nightly-{moment:%Y%m%d}")
        if self.tag_latest:
            extra.append("latest")
        refs = list(self.image_refs)
        repositories = dict.fromkeys(parse_image_ref(ref).repository for ref in self.image_refs)
        refs.extend(f"{repo}:{tag}" for repo in repositories for tag in extra)
        return list(dict.fromkeys(refs))


def _format_loc(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "params"
    head, *rest = loc
    return str(head) + "".join(f"[{part!r}]" for part in rest)


class FieldProblem(ValueError):
    """A problem found by a check across fields, reported under the field that
    fixes it (a model validator's errors have no field of their own)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _describe_error(error: Mapping[str, Any]) -> str:
    where = _format_loc(tuple(error["loc"]))
    problem = error.get("ctx", {}).get("error")
    if not error["loc"] and isinstance(problem, FieldProblem):
        where = problem.field
    kind = error["type"]
    if kind == "value_error" and "error" in error.get("ctx", {}):
        reason = str(error["ctx"]["error"])
    elif kind == "extra_forbidden":
        reason = "unknown parameter"
        close = difflib.get_close_matches(where, BuildParams.model_fields, n=1)
        if close:
            reason += f" (did you mean {close[0]!r}?)"
    else:
        reason = f"{error['msg']} (got {show(error['input'])})"
    line = f"{where}: {reason}"
    return line.replace("\r", "\\r").replace("\n", "\\n")


def parse_params(data: Mapping[str, Any] | BuildParams) -> BuildParams:
    """Validate raw parameters, defaults included, into `BuildParams`.

    Unlike `BuildParams(**data)`, missing fields are validated too (so the
    default source '.' must really be a Go module), and failures come back as
    one `ParamsError` whose message is a single line, fit for a flow-run state.
    """
    if isinstance(data, BuildParams):
        data = data.model_dump()
    payload: Any = data
    if isinstance(data, Mapping):
        payload = dict(data)
        for name, field in BuildParams.model_fields.items():
            if name not in payload:
                payload[name] = field.get_default(call_default_factory=True)
    try:
        return BuildParams.model_validate(payload)
    except ValidationError as exc:
        problems = [_describe_error(error) for error in exc.errors()]
        raise ParamsError(problems) from None
