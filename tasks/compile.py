"""Stage 2, compile: a static Go binary per platform, cross-compiled natively.

The builder runs on the engine's own platform and cross-compiles with
GOOS/GOARCH (no emulation, so arm64 costs what amd64 costs). Dependencies are
downloaded from go.mod/go.sum alone before the rest of the source is copied, so
the module download is cached apart from code changes; the module and build
caches are cache volumes that outlive each build.

The task's result names the binary, kept as a file of its own in Prefect's result
storage (``tasks/binaries.py``), under a cache key made of everything that
determines it, so a later run with the same inputs is served from Prefect's
result storage even when the engine's own cache is gone. Within one run, the
assemble stage takes the binary from the engine, where it was built, instead of
uploading the host's copy again.

Module proxies and private modules: ``go_env`` (GOPROXY, GOPRIVATE, ...) is set in
the builder before ``go mod download``; credentials from ``go_auth_secret_block``
are mounted as a Dagger secret file, ``/root/.netrc``, which the go command (and
git, for direct fetches) reads. A secret mount is not part of the container's
filesystem (core/container.go keeps it in ``Secrets``, beside the rootfs, and
mounts it per exec), so the binary exported from the builder and the runtime
image built from that binary never contain it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from prefect import task
from prefect.context import TaskRunContext
from pydantic import BaseModel

from tasks import binaries, progress
from tasks.goenv import goenv
from tasks.gomod import go_work_candidates, nearest_go_work, vendor_manifest
from tasks.gopackages import is_program
from tasks.image_store import file_sha256
from tasks.ldflags import DEFAULT_VERSION_VARIABLE, expand, stamp_refused, stamp_values
from tasks.params import BuildParams
from tasks.registry_auth import RegistryAuth, pull_auth, registry_host, with_registry_auth
from tasks.retries import retry_options
from tasks.secrets import GoAuth, load_secret_block, parse_go_auth, secret_name
from tasks.session import engine_ready, remember_in_engine
from tasks.source import SourceInfo, git_token, source_directory

if TYPE_CHECKING:
    import dagger
    from prefect.filesystems import WritableFileSystem

GOMODCACHE = "/go/pkg/mod"
GOCACHE = "/root/.cache/go-build"
SRC = "/src"
OUT = "/out"
EXTRA_OUT = "/out/more"
# HOME of the golang images' root user: where go (GOAUTH's default, netrc) and git
# look for credentials.
NETRC = "/root/.netrc"
# Each password alone, also mounted as a secret: the engine scrubs a secret's
# value from exec output only whole (engine/engineutil/secret_scrub.go), so the
# .netrc's text as one value would not cover a password printed on its own.
SCRUB_DIR = "/run/secrets/gobuild-go-auth"
_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


class StoredProgram(BaseModel):
    """One of ``extra_packages`` compiled: its file name in the image, and where
    it is kept, as for the main binary."""

    name: str
    sha256: str
    size: int
    key: str


class CompiledBinary(BaseModel):
    """A compile result: what the report needs, and where the binary is kept
    (a file of its own beside Prefect's results, ``tasks/binaries.py``)."""

    platform: str
    sha256: str
    size: int
    go_version: str
    key: str  # in the result storage
    extras: list[StoredProgram] = []  # extra_packages, in their order

    def stored(self) -> list[tuple[str, int]]:
        """(storage key, size) of every file this result stands for."""
        return [(self.key, self.size), *((e.key, e.size) for e in self.extras)]


# What `go mod download` needs, for every module in the source: replace
# directives point at sibling modules. (A workspace has no download step.)
MODULE_FILES = ["**/go.mod", "**/go.sum"]


def module_path(params: BuildParams) -> str:
    """The module's directory in the builder."""
    return SRC if params.module_dir in ("", ".") else f"{SRC}/{params.module_dir}"


def go_flags(params: BuildParams, *, vendored: bool) -> str:
    """The build's ``-mod`` flag, then the user's GOFLAGS (which may not set -mod)."""
    mod = "-mod=vendor" if vendored else "-mod=readonly"
    return " ".join([mod, *params.go_env.get("GOFLAGS", "").split()])


def with_go_auth(ctr: dagger.Container, auth: GoAuth) -> dagger.Container:
    """Mount the credentials as Dagger secrets: the .netrc, and each password alone
    so that the engine scrubs it from the output of every exec that follows.

    Secret names are fixed words and the block's name, never derived from the
    values: a name is not secret, and the engine shows it in its traces
    (:func:`tasks.secrets.secret_name`).
    """
    from dagger import dag

    netrc = dag.set_secret(secret_name("go-netrc", auth.origin), auth.netrc())
    ctr = ctr.with_mounted_secret(NETRC, netrc)
    for n, entry in enumerate(auth.entries):
        name = secret_name(f"go-auth-{n}", auth.origin)
        ctr = ctr.with_mounted_secret(f"{SCRUB_DIR}/{n}", dag.set_secret(name, entry.password))
    return ctr


def builder(
    src: dagger.Directory,
    params: BuildParams,
    *,
    vendored: bool = False,
    workspace: bool = False,
    auth: GoAuth | None = None,
    pull: RegistryAuth | None = None,
) -> dagger.Container:
    """The golang stage up to (and including) the optional vet + test gate
    (:func:`builder_steps` describes it)."""
    return builder_steps(
        src, params, vendored=vendored, workspace=workspace, auth=auth, pull=pull
    )[0]


def builder_steps(
    src: dagger.Directory,
    params: BuildParams,
    *,
    vendored: bool = False,
    workspace: bool = False,
    auth: GoAuth | None = None,
    pull: RegistryAuth | None = None,
) -> tuple[dagger.Container, list[tuple[list[str], dagger.Container]]]:
    """The golang stage up to (and including) the optional vet + test gate, and
    each of its commands with the container it ends in, so that they can be run
    and timed one at a time (:func:`tasks.progress.engine_steps`).

    It does not depend on the target platform, so all platforms share it and the
    engine runs the gate once. A vendored module (``vendor/modules.txt``) builds
    from ``vendor/`` with no download, as plain ``go build`` does there (Go's
    default for go >= 1.14 modules); otherwise the modules are downloaded from the
    go.mod/go.sum files alone before the rest of the source is copied, so the
    download is cached apart from code changes, and ``-mod=readonly`` keeps a
    stale go.sum from being rewritten silently. In ``workspace`` mode (a go.work
    applies) there is no download step either: ``go mod download`` there resolves
    every workspace module's requirements, the workspace's own modules at their
    required versions too, which fails for a version never published (``v0.0.0``,
    rancher/fleet#4786) and fetches one that is for nothing, though ``go build``
    uses the workspace's copy; nor does it fetch all the build needs
    (golang/go#51946). The build then fetches what it needs into the same module
    cache.

    ``params.go_env`` is set before the download. The credentials in ``auth`` stay
    mounted for vet, test and build too, since any later go command fetches what
    ``go mod download`` did not cover; they are secret mounts, so they are in no
    layer of the builder and in nothing exported from it. ``pull`` holds the
    registry credentials, given to the engine before the builder image is pulled
    when one is for its registry (``tasks/registry_auth.py``).
    """
    from dagger import dag

    ctr = (
        with_registry_auth(dag.container(), registry_host(params.builder_image), pull)
        .from_(params.builder_image)
        .with_mounted_cache(GOMODCACHE, dag.cache_volume("go-mod"))
        .with_mounted_cache(GOCACHE, dag.cache_volume("go-build"))
        .with_env_variable("GOMODCACHE", GOMODCACHE)
        .with_env_variable("GOCACHE", GOCACHE)
        .with_env_variable("CGO_ENABLED", "0")
        .with_env_variable("GOFLAGS", go_flags(params, vendored=vendored))
    )
    for key, value in sorted(params.go_env.items()):
        if key != "GOFLAGS":
            ctr = ctr.with_env_variable(key, value)
    if auth is not None:
        ctr = with_go_auth(ctr, auth)
    ctr = ctr.with_workdir(module_path(params))
    steps: list[tuple[list[str], dagger.Container]] = []
    if not vendored and not workspace:
        download = ["go", "mod", "download"]
        ctr = ctr.with_directory(SRC, src, include=MODULE_FILES).with_exec(download)
        steps.append((download, ctr))
    ctr = ctr.with_directory(SRC, src)
    if params.run_checks:
        tags = ["-tags", ",".join(params.build_tags)] if params.build_tags else []
        checks = [["go", "vet", *tags, "./..."]] if params.run_vet else []
        for check in [*checks, ["go", "test", *tags, "./..."]]:
            ctr = ctr.with_exec(check)
            steps.append((check, ctr))
    return ctr, steps


async def workspace_file(
    src: dagger.Directory, params: BuildParams, source: SourceInfo
) -> str | None:
    """The go.work Go reads for the module in the engine (source-relative), None
    in module mode: ``tasks.gomod.nearest_go_work`` of what the engine
    received, from the list of files sent where the source is local, else asked
    of the engine."""
    if source.workspaces is not None:
        return nearest_go_work(params.module_dir, source.workspaces.__contains__)
    candidates = go_work_candidates(params.module_dir)
    found = await asyncio.gather(*(src.exists(c) for c in candidates))
    there = {c for c, exists in zip(candidates, found, strict=True) if exists}
    return nearest_go_work(params.module_dir, there.__contains__)


async def is_vendored(
    src: dagger.Directory, params: BuildParams, source: SourceInfo, workspace: str | None = None
) -> bool:
    """Whether ``go build`` builds from a vendor directory in the engine, as Go
    decides by default (``tasks.gomod.vendor_manifest``; ``workspace``: the go.work
    in use): from the list of files sent where the source is local, else asked of
    the engine."""
    manifest = vendor_manifest(params.module_dir, workspace)
    if source.vendor_manifests is not None:
        return manifest in source.vendor_manifests
    return await src.exists(manifest)


def stamp(source: SourceInfo, version: str) -> dict[str, str]:
    """What ``-ldflags`` may stamp into the binary (``tasks/ldflags.py``)."""
    return stamp_values(version, source.commit, source.created, source.epoch())


def build_args(
    params: BuildParams,
    values: Mapping[str, str],
    output: str,
    packages: Sequence[str] | None = None,
    *,
    stamp_version: bool = True,
) -> list[str]:
    """``go build`` of ``packages`` (default: ``main_package``) with the version in
    ``version_variable`` (unless ``stamp_version`` is off) and the user's
    ``ldflags``, their placeholders expanded from ``values`` (:func:`stamp`)."""
    ldflags = "-s -w"
    if stamp_version:
        ldflags += f" -X {params.version_variable}={values['VERSION']}"
    if params.ldflags:
        ldflags += " " + expand(params.ldflags, values)
    args = ["go", "build", "-trimpath", "-ldflags", ldflags]
    if params.build_tags:
        args += ["-tags", ",".join(params.build_tags)]
    return [*args, "-o", output, *(packages or [params.main_package])]


def binary_path(params: BuildParams) -> str:
    """Where ``go build`` writes the binary in the builder."""
    return f"{OUT}/{params.resolved_app_name()}"


def cross(builder_ctr: dagger.Container, platform: str) -> dagger.Container:
    """The builder set to compile for ``platform`` (GOOS, GOARCH, GOARM...)."""
    ctr = builder_ctr
    for key, value in goenv(platform).items():
        ctr = ctr.with_env_variable(key, value)
    return ctr


Built = TypeVar("Built", "dagger.File", "dagger.Directory")  # what a go build chain yields


class GoBuild(NamedTuple, Generic[Built]):
    """A ``go build`` chain (not evaluated) and its command, which the run's log
    shows while the chain runs."""

    args: list[str]
    output: Built


def binary(
    builder_ctr: dagger.Container,
    params: BuildParams,
    platform: str,
    values: Mapping[str, str],
    *,
    stamp_version: bool = True,
) -> GoBuild[dagger.File]:
    """The chain that yields the static binary for ``platform``."""
    out = binary_path(params)
    args = build_args(params, values, out, stamp_version=stamp_version)
    return GoBuild(args, cross(builder_ctr, platform).with_exec(args).file(out))


def extra_binaries(
    builder_ctr: dagger.Container,
    params: BuildParams,
    platform: str,
    values: Mapping[str, str],
    *,
    stamp_version: bool = True,
) -> GoBuild[dagger.Directory]:
    """The chain that yields ``extra_packages``' programs for ``platform`` as one
    directory: one ``go build -o DIR/`` of them all, which names
    each program as go install does and shares the build cache with the main
    binary's, so the packages they have in common compile once."""
    args = build_args(
        params, values, f"{EXTRA_OUT}/", params.extra_packages, stamp_version=stamp_version
    )
    return GoBuild(args, cross(builder_ctr, platform).with_exec(args).directory(EXTRA_OUT))


async def export_build(
    scope: str,
    params: BuildParams,
    chain: Callable[[bool], GoBuild[Built]],
    dest: Path,
) -> Built:
    """Run a ``go build`` chain (``chain(stamp_version)``, :func:`binary` or
    :func:`extra_binaries`) and export what it yields to ``dest``; -> the file or
    directory it yields. When the linker refuses the default version stamp (the program's
    ``main.version`` is not a string, ``tasks/ldflags.py``), the build runs once
    more without it, and the run's log says so."""
    import dagger

    build = chain(True)
    try:
        async with progress.step(scope, progress.command_text(build.args)):
            await build.output.export(str(dest))
        return build.output
    except dagger.ExecError as exc:
        default = params.version_variable == DEFAULT_VERSION_VARIABLE
        if not default or not stamp_refused(exc.stderr, params.version_variable):
            raise
    progress.note(
        f"{scope}: {params.version_variable} in this program is not a string variable, "
        "which go build's -X cannot set: built without the version stamp (set "
        "version_variable to a string variable to stamp one)"
    )
    build = chain(False)
    async with progress.step(scope, progress.command_text(build.args)):
        await build.output.export(str(dest))
    return build.output


async def main_packages(builder_ctr: dagger.Container, params: BuildParams) -> list[str] | None:
    """The module's main packages as ``./dir``, as ``go list`` sees them in the
    builder; asked only after ``go build`` wrote a package archive, which for a git
    source is the first moment anything knows (a local module's are named before
    any engine work, ``tasks/gopackages.py``). None if go list itself failed."""
    tags = ["-tags", ",".join(params.build_tags)] if params.build_tags else []
    template = '{{if eq .Name "main"}}{{.Dir}}{{end}}'
    root = module_path(params)
    try:
        out = await builder_ctr.with_exec(
            ["go", "list", "-e", *tags, "-f", template, "./..."]
        ).stdout()
    except Exception:  # only to name candidates in a message already failing
        return None
    dirs = [line.strip() for line in out.splitlines() if line.strip()]
    return ["." if d == root else "./" + d.removeprefix(root + "/") for d in dirs]


def compile_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Everything that determines the binary, and this module's code.

    ``go_env`` is in it: a proxy may serve other code for a version go.sum does not
    pin yet, and GOFLAGS can change the build. The credentials are not: go.sum
    (in the source digest) pins every module's content, so who may download it
    does not change the binary; neither does the Secret block's name.
    """
    source: SourceInfo = parameters["source"]
    params: BuildParams = parameters["params"]
    determinants = {
        "stage": "compile",
        "code": _CODE,
        "source": source.digest,
        "platform": parameters["platform"],
        "version": parameters["version"],
        # What the ldflags placeholders stamp: the commit and its time, which the
        # file digest alone does not decide (a new commit of the same files).
        "ldflags_expanded": expand(params.ldflags, stamp(source, parameters["version"])),
        **params.model_dump(
            include={
                "builder_image",
                "module_dir",
                "main_package",
                "extra_packages",
                "version_variable",
                "ldflags",
                "build_tags",
                "run_checks",
                "run_vet",
                "app_name",
                "go_env",
            }
        ),
        "app": params.resolved_app_name(),
    }
    return hashlib.sha256(json.dumps(determinants, sort_keys=True).encode()).hexdigest()


async def go_auth(params: BuildParams) -> GoAuth | None:
    """The module credentials of ``go_auth_secret_block``, read at run time."""
    if not params.go_auth_secret_block:
        return None
    value = await load_secret_block(params.go_auth_secret_block, "go_auth_secret_block")
    return parse_go_auth(value, params.go_auth_secret_block)


@task(
    name="compile",
    cache_key_fn=compile_cache_key,
    persist_result=True,
    task_run_name="compile {platform}",
    **retry_options(),
)
async def compile_binary(
    source: SourceInfo, params: BuildParams, platform: str, version: str
) -> CompiledBinary:
    await engine_ready()
    token = await git_token(params) if source.kind == "git" else None
    auth = await go_auth(params)
    pull = await pull_auth(params, params.builder_image)
    src = source_directory(source, token)
    workspace = await workspace_file(src, params, source)
    vendored = await is_vendored(src, params, source, workspace)
    builder_ctr, steps = builder_steps(
        src, params, vendored=vendored, workspace=workspace is not None, auth=auth, pull=pull
    )
    await progress.engine_steps(f"compile {platform}", steps)  # timed, once per run
    storage = await binaries.result_storage()
    values = stamp(source, version)

    def main_build(stamp_version: bool) -> GoBuild[dagger.File]:
        return binary(builder_ctr, params, platform, values, stamp_version=stamp_version)

    with tempfile.TemporaryDirectory(prefix="gobuild-") as tmp:
        path = Path(tmp, params.resolved_app_name())
        built = await export_build(f"compile {platform}", params, main_build, path)
        if not is_program(path):  # a git source's package is only seen here
            raise await not_a_program(builder_ctr, params, "main_package", params.main_package)
        extras: list[StoredProgram] = []
        if params.extra_packages:
            extras = await compile_extras(builder_ctr, params, platform, values, Path(tmp), storage)
        # Streamed: hashed, stored and read for its Go version without loading it whole.
        sha256 = file_sha256(path)
        compiled = CompiledBinary(
            platform=platform,
            sha256=sha256,
            size=path.stat().st_size,
            go_version=binaries.go_build_version(path) or "unknown",
            key=await binaries.keep(path, sha256, storage),
            extras=extras,
        )
    remember_in_engine(sha256, built)
    return compiled


async def compile_extras(
    builder_ctr: dagger.Container,
    params: BuildParams,
    platform: str,
    values: Mapping[str, str],
    tmp: Path,
    storage: WritableFileSystem,
) -> list[StoredProgram]:
    """``extra_packages``' programs for ``platform``: built (:func:`extra_binaries`),
    exported into ``tmp``, each checked to be a program and kept as the main
    binary is, and noted as still in the engine for the assemble stage."""

    def extras_build(stamp_version: bool) -> GoBuild[dagger.Directory]:
        return extra_binaries(builder_ctr, params, platform, values, stamp_version=stamp_version)

    more = await export_build(f"compile {platform}", params, extras_build, tmp / "more")
    programs = []
    for package, name in params.extra_programs():
        path = tmp / "more" / name
        if not path.is_file() or not is_program(path):  # go build skips a library here
            raise await not_a_program(builder_ctr, params, "extra_packages", package)
        sha256 = file_sha256(path)
        key = await binaries.keep(path, sha256, storage)
        programs.append(StoredProgram(name=name, sha256=sha256, size=path.stat().st_size, key=key))
        remember_in_engine(sha256, more.file(name))
    return programs


async def not_a_program(
    builder_ctr: dagger.Container, params: BuildParams, field: str, package: str
) -> ValueError:
    """The failure for a package whose ``go build`` wrote no program (a library's
    archive, or, for several packages at once, nothing), naming the module's main
    packages as ``go list`` sees them: for a git source the first moment anything
    can tell."""
    mains = await main_packages(builder_ctr, params)
    found = ""  # go list itself failed: nothing more to say
    if mains:
        found = f"; main packages in this module: {', '.join(mains)}"
    elif mains is not None:
        found = "; go list found no main package in this module"
    return ValueError(
        f"{field}: {package!r} is not a main package: "
        f"go build wrote a package archive, not a program{found}"
    )


def binary_available(compiled: CompiledBinary) -> bool:
    """A cached compile result is only as good as its stored binary."""
    from prefect.results import get_result_store

    storage = get_result_store().result_storage
    return storage is None or all(
        binaries.available(key, size, storage) for key, size in compiled.stored()
    )
